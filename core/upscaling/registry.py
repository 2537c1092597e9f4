"""What an upscaler is, the kinds of upscaler, and finding one by name.

An upscaler *kind* knows where its upscalers come from and how to load one: the built-in
resamplers (``resamplers.py``), model files that spandrel understands (``spandrel_models.py``),
and the x4 latent-diffusion upscaler (``x4.py``). A kind is any object with the
:class:`UpscalerKind` methods, added with :func:`register_kind`; a loaded upscaler is any object
with the :class:`Upscaler` method. Nothing else needs to change to add a kind.

The last loaded model is kept in a :class:`ModelCache`; the engine holds its own and passes it
(``cache=``), callers that do not get :data:`DEFAULT_CACHE`.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Protocol, runtime_checkable

import torch
from PIL import Image

from core.errors import NOT_FOUND, EngineError
from core.modelfiles import listed_name, name_in_folder

ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_MODELS_ROOT = ROOT / "models"

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class UpscalerInfo:
    """One upscaler as offered to the user: ``name`` (unique in a listing), the model file
    (``None`` for built-ins) and the name of the kind that loads it."""

    name: str
    path: Path | None
    kind: str


@runtime_checkable
class Upscaler(Protocol):
    """A loaded upscaler."""

    info: UpscalerInfo

    def upscale(
        self,
        image: Image.Image,
        size: tuple[int, int],
        *,
        tile: int,
        overlap: int,
        identity: bool = False,
        progress: ProgressFn | None = None,
    ) -> Image.Image:
        """``image`` resized to exactly ``size`` (width, height). ``identity`` says the caller
        asked for factor 1 (a model may still be run once, as A1111 does for 1x models)."""
        ...


class UpscalerKind(Protocol):
    name: str

    def list(self, models_root: Path) -> list[UpscalerInfo]:
        """Upscalers of this kind; built-ins have ``path=None``, files are named by their stem."""
        ...

    def claims(self, path: Path) -> bool:
        """Whether a file given by path (inside the models folder) is for this kind."""
        ...

    def load(self, info: UpscalerInfo, device: torch.device, dtype: torch.dtype | None) -> Upscaler:
        ...


_KINDS: dict[str, UpscalerKind] = {}


def scan_folders(models_root: str | os.PathLike, folders, candidates: Callable[[Path], Iterable[Path]],
                 accept: Callable[[Path], bool]) -> list[Path]:
    """The paths ``candidates(base)`` yields in each of ``folders`` under ``models_root`` that
    ``accept`` takes, each file once (a folder linked twice is not listed twice)."""
    found: list[Path] = []
    seen: set[Path] = set()
    for folder in folders:
        base = Path(models_root) / folder
        if not base.is_dir():
            continue
        for path in candidates(base):
            key = path.resolve()
            if key not in seen and accept(path):
                seen.add(key)
                found.append(path)
    return found


def register_kind(kind: UpscalerKind) -> UpscalerKind:
    """Add a kind (a later one with the same name replaces the earlier). Built-in kinds list
    first, in the order they were registered."""
    _KINDS[kind.name] = kind
    return kind


def kinds() -> list[UpscalerKind]:
    return list(_KINDS.values())


def get_kind(name: str) -> UpscalerKind:
    try:
        return _KINDS[name]
    except KeyError:
        raise EngineError(f"upscaler kind {name!r} is not registered (known: {', '.join(_KINDS)})") from None


def list_upscalers(models_root: str | os.PathLike = DEFAULT_MODELS_ROOT) -> list[UpscalerInfo]:
    """All upscalers, A1111 style: built-ins first (None, Lanczos, Nearest, Bicubic), then model
    files by stem, sorted case-insensitively. A stem found more than once (or equal to a built-in
    name) is named by its path relative to ``models_root`` instead, e.g. ``SwinIR/4x.pth``."""
    root = Path(models_root)
    builtins: list[UpscalerInfo] = []
    files: list[UpscalerInfo] = []
    for kind in kinds():
        for info in kind.list(root):
            (builtins if info.path is None else files).append(info)
    taken = {b.name.lower() for b in builtins}
    counts: dict[str, int] = {}
    for info in files:
        counts[info.name.lower()] = counts.get(info.name.lower(), 0) + 1
    named = []
    for info in files:
        if counts[info.name.lower()] > 1 or info.name.lower() in taken:
            info = UpscalerInfo(_relative_name(info.path, root), info.path, info.kind)
        named.append(info)
    named.sort(key=lambda i: (i.name.lower(), i.name))
    return builtins + named


def _relative_name(path: Path, root: Path) -> str:
    return listed_name(path, root) or str(path)


def find_upscaler(name: str, models_root: str | os.PathLike = DEFAULT_MODELS_ROOT) -> UpscalerInfo:
    """A name from :func:`list_upscalers` (exactly, else case-insensitively), or a path to a
    model file inside ``models_root`` (relative to it, or absolute)."""
    if not isinstance(name, str) or not name.strip():
        raise EngineError("no upscaler name given", "upscaler")
    root = Path(models_root)
    available = list_upscalers(root)
    for info in available:
        if info.name == name:
            return info
    folded = [info for info in available if info.name.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    # A file listed under another name (A1111's for its downloads) is found by its stem too.
    by_stem = [info for info in available if info.path is not None and info.path.stem.lower() == name.lower()]
    if len(by_stem) == 1:
        return by_stem[0]
    if _looks_like_path(name):
        return _info_for_path(name, root)
    names = [info.name for info in available]
    shown = ", ".join(names[:30]) + (f", and {len(names) - 30} more" if len(names) > 30 else "")
    raise EngineError(f"unknown upscaler {name!r} (known: {shown})", "upscaler", NOT_FOUND)


def _looks_like_path(name: str) -> bool:
    return "/" in name or "\\" in name or any(k.claims(Path(name)) for k in kinds())


def _info_for_path(name: str, root: Path) -> UpscalerInfo:
    candidate = Path(name)
    if candidate.is_absolute():  # an absolute path names a file inside the folder, as written
        relative = listed_name(os.path.normpath(candidate), root)
        if relative is None:
            raise EngineError(f"{name!r} is outside the models folder {root}", "upscaler", NOT_FOUND)
        name = relative
    path = name_in_folder(root, name, "upscaler", f"models folder {root}")
    if not path.is_file():
        raise EngineError(f"{name!r}: no such model file in {root}", "upscaler", NOT_FOUND)
    for kind in kinds():
        if kind.claims(path):
            return UpscalerInfo(path.stem, path, kind.name)
    raise EngineError(f"{path.name}: not an upscaler model file (no upscaler kind reads {path.suffix or 'it'})", "upscaler")


class ModelCache:
    """Holds the last loaded model upscaler (one slot), keyed by file, its size and modification
    time, device and dtype; thread-safe. Built-ins (no file) are never cached: they cost nothing."""

    def __init__(self):
        self._lock = threading.Lock()
        self._key: tuple | None = None
        self._upscaler: Upscaler | None = None

    def get(self, info: UpscalerInfo, device: torch.device, dtype: torch.dtype | None,
            loader: Callable[[], Upscaler]) -> Upscaler:
        if info.path is None:
            return loader()
        try:
            stat = info.path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            stamp = None
        key = (info.kind, str(info.path.resolve()), stamp, str(device), dtype)
        with self._lock:
            if self._key == key and self._upscaler is not None:
                return self._upscaler
            self._key, self._upscaler = None, None  # free the old model before loading the next
            upscaler = loader()
            self._key, self._upscaler = key, upscaler
            return upscaler

    def clear(self) -> None:
        with self._lock:
            self._key, self._upscaler = None, None

    @property
    def loaded(self) -> Upscaler | None:
        return self._upscaler


DEFAULT_CACHE = ModelCache()


def load_upscaler(
    info: UpscalerInfo,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache: ModelCache | None = None,
) -> Upscaler:
    """Load ``info`` on ``device``; ``dtype=None`` lets the kind choose (the device's auto
    precision, core.devices.resolve_dtype, where the model supports it). The last loaded model is reused from
    ``cache`` (default :data:`DEFAULT_CACHE`)."""
    from core.devices import resolve_device

    device = device if isinstance(device, torch.device) else resolve_device(device)
    kind = get_kind(info.kind)
    cache = DEFAULT_CACHE if cache is None else cache
    return cache.get(info, device, dtype, lambda: kind.load(info, device, dtype))
