"""LoRA files on disk: finding them by name, reading them safely, hashing, listing for the UI.

Files live in ``models/Lora`` (subfolders too). ``.safetensors`` are memory-mapped (copy on
write: nothing ever writes to the file); ``.pt``/``.ckpt``/``.bin`` go through
``torch.load(weights_only=True)`` only, so a pickle that would run code is refused before any of
it runs (core.loading.read_pickle_checkpoint).
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch

from core.loading import read_pickle_checkpoint, read_safetensors, safetensors_header
from core.modelfiles import LORA_SUFFIXES, is_safetensors, model_files, preview_picture



def lora_files(folder: Path) -> list[Path]:
    """LoRA files under ``folder``; files and folders the user linked in are followed."""
    folder = Path(folder)
    return sorted(model_files(folder, LORA_SUFFIXES), key=lambda p: p.relative_to(folder).as_posix().lower())


def relative_name(path: Path, folder: Path) -> str:
    """``sub/name`` for ``models/Lora/sub/name.safetensors``."""
    return path.relative_to(folder).with_suffix("").as_posix()


def read_header(path: Path) -> dict:
    """A .safetensors header (tensor table and ``__metadata__``) without reading any tensor;
    {} for other files or a broken header."""
    return safetensors_header(path)


def read_metadata(path: Path) -> dict[str, str]:
    metadata = read_header(path).get("__metadata__") or {}
    return {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}


def alias_of(path: Path, metadata: dict[str, str] | None = None) -> str:
    """The name a kohya-trained file calls itself (``ss_output_name``), else its stem."""
    metadata = read_metadata(path) if metadata is None else metadata
    alias = metadata.get("ss_output_name")
    return alias if alias else path.stem


def lora_hash(path: Path) -> str:
    """A1111's LoRA hash: sha256 of a .safetensors file's bytes after its header (so editing
    the metadata keeps the hash), of the whole file for other formats. Full hex digest."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if is_safetensors(path):
            head = f.read(8)
            if len(head) == 8:
                (length,) = struct.unpack("<Q", head)
                f.seek(8 + length)
            else:
                f.seek(0)
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class HashCache:
    """In-memory LoRA hashes by (path, size, mtime)."""

    def __init__(self):
        self._entries: dict[str, tuple[int, int, str]] = {}

    def get(self, path: Path, compute: bool = True) -> str | None:
        stat = path.stat()
        entry = self._entries.get(str(path))
        if entry and entry[:2] == (stat.st_size, stat.st_mtime_ns):
            return entry[2]
        if not compute:
            return None
        digest = lora_hash(path)
        self._entries[str(path)] = (stat.st_size, stat.st_mtime_ns, digest)
        return digest

    def short(self, path: Path) -> str:
        return self.get(path)[:12]


def list_loras(models_dir: str | Path, with_hash: bool = False, hashes: HashCache | None = None) -> list[dict]:
    """Every LoRA under ``models_dir/Lora``, for the UI and the REST API.

    Each entry: ``name`` (what goes in ``<lora:name:1>``: the file stem, or the relative path
    without suffix when two files share a stem), ``path``, ``relative`` (relative path without
    suffix), ``alias`` (``ss_output_name`` or the stem), ``metadata`` (safetensors header
    metadata), ``preview`` (a same-named .preview.png/.png/.jpg/... or None) and, with
    ``with_hash`` or when already known, ``hash`` (A1111's 12-digit short hash)."""
    folder = Path(models_dir) / "Lora"
    files = lora_files(folder)
    stems: dict[str, int] = {}
    for path in files:
        stems[path.stem] = stems.get(path.stem, 0) + 1
    items = []
    for path in files:
        relative = relative_name(path, folder)
        metadata = read_metadata(path)
        preview = preview_picture(path)
        item = {
            "name": path.stem if stems[path.stem] == 1 else relative,
            "path": str(path),
            "relative": relative,
            "alias": alias_of(path, metadata),
            "metadata": metadata,
            "preview": str(preview) if preview else None,
        }
        digest = None
        if hashes is not None or with_hash:
            digest = (hashes or HashCache()).get(path, compute=with_hash)
        if digest:
            item["hash"] = digest[:12]
        items.append(item)
    return items


def find_lora(folder: Path, name: str) -> tuple[Path | None, str]:
    """A name from a prompt tag -> its file, and a note when the name is ambiguous.

    Tried in order: the relative path (with or without suffix), the file stem, the alias
    (``ss_output_name``); each case-sensitively, then ignoring case. Only files inside the
    folder are ever returned."""
    files = lora_files(folder)
    name = name.strip()
    keyed = [
        lambda p: {relative_name(p, folder), p.relative_to(folder).as_posix()},
        lambda p: {p.stem},
        lambda p: {alias_of(p)},
    ]
    for names_of in keyed:
        for fold in (False, True):
            wanted = name.lower() if fold else name
            found = [p for p in files if wanted in {n.lower() if fold else n for n in names_of(p)}]
            if found:
                note = ""
                if len(found) > 1:
                    note = f"LoRA name {name!r} matches {len(found)} files; using {relative_name(found[0], folder)}"
                return found[0], note
    return None, ""


def read_lora_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str], dict | None]:
    """Tensors, safetensors metadata, and a bare PEFT save's adapter_config.json (if beside it).
    Raises core.errors.EngineError for unsafe or broken files."""
    if is_safetensors(path):
        tensors, metadata = read_safetensors(path)
    else:
        tensors, metadata = read_pickle_checkpoint(path), {}
    peft_config = None
    config = path.parent / "adapter_config.json"
    if path.stem.startswith("adapter_model") and config.is_file():
        try:
            peft_config = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            peft_config = None
    return tensors, metadata, peft_config
