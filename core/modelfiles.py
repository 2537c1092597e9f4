"""Model files in the model folders (checkpoints, LoRA, VAE, embeddings, upscalers): listing
them, telling their kind by suffix, and turning a name a request gives into a path.

The folders belong to the user: a file or folder they linked into one (the README suggests
linking a checkpoint collection kept elsewhere) is theirs too and is followed. A name from a
request is therefore judged as written, not by where it leads: a relative path with no ``..``
and nothing absolute reaches exactly what a listing of the folder shows, and nothing beside
it. Suffixes are compared case-insensitively (``X.SAFETENSORS`` is a safetensors file).
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterator

from core.errors import NOT_FOUND, EngineError

# The files a LoRA can come in (the page's cards, the API's listing, the LoRA extension).
LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
# A model's preview picture beside it, A1111's names first: name.preview.png, then name.png, ...
PREVIEW_SUFFIXES = (".preview.png", ".preview.jpg", ".preview.jpeg", ".preview.webp", ".png", ".jpg", ".jpeg", ".webp")


def preview_picture(path: Path) -> Path | None:
    """The preview picture of the model file ``path``, None when it has none."""
    base = path.with_suffix("")
    for suffix in PREVIEW_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


# The model files a preview picture may belong to (checkpoints, LoRA, embeddings, VAE).
PREVIEWED_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def is_preview_picture(path: Path) -> bool:
    """Whether ``path`` is what :func:`preview_picture` finds for a model file beside it."""
    path = Path(path)
    lowered = path.name.lower()
    for suffix in PREVIEW_SUFFIXES:
        if not lowered.endswith(suffix):
            continue
        base = path.name[: -len(suffix)]
        for model_suffix in PREVIEWED_SUFFIXES:
            for written in (model_suffix, model_suffix.upper()):
                model = path.with_name(base + written)
                if model.is_file() and preview_picture(model) == path:
                    return True
    return False


def has_suffix(path: str | os.PathLike, suffixes: tuple[str, ...] | set[str] | frozenset[str]) -> bool:
    """Whether ``path`` ends in one of ``suffixes`` (given in lower case), in any case."""
    return Path(path).suffix.lower() in suffixes


def is_safetensors(path: str | os.PathLike) -> bool:
    return has_suffix(path, (".safetensors",))


def walk(folder: str | os.PathLike) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk`` of ``folder`` that follows linked folders, each real folder once (so a link
    back up the tree cannot loop, and a folder linked twice is not listed twice). Yields
    (folder, sub-folder names, file names), both sorted; removing names from the sub-folder
    list keeps the walk out of them. Paths stay as seen under ``folder`` (links not resolved)."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    seen = {os.path.realpath(folder)}
    for directory, subdirs, files in os.walk(folder, followlinks=True):
        kept = []
        for name in sorted(subdirs):
            real = os.path.realpath(os.path.join(directory, name))
            if real not in seen:
                seen.add(real)
                kept.append(name)
        subdirs[:] = kept
        files.sort()
        yield Path(directory), subdirs, files


def model_files(folder: str | os.PathLike, suffixes) -> list[Path]:
    """Every file under ``folder`` (linked files and folders followed) whose suffix is one of
    ``suffixes`` in any case, as paths under ``folder``, in walk order."""
    return [directory / name for directory, _, files in walk(folder) for name in files
            if has_suffix(name, suffixes) and (directory / name).is_file()]


def name_in_folder(folder: str | os.PathLike, name: str, field: str, folder_label: str) -> Path:
    """``folder / name`` for a name a request gave, refused (EngineError naming ``field``, saying
    the name is outside ``folder_label``) when the name, as written, leaves the folder: an
    absolute path, a drive, or a ``..`` part. Links inside the folder are the user's and are
    not judged by their target. The path is absolute but not resolved."""
    text = str(name)
    windows = PureWindowsPath(text)  # splits at "/" and "\": "..\\x" is refused on every system
    if "\0" in text or PurePosixPath(text).is_absolute() or windows.drive or windows.root or ".." in windows.parts:
        raise EngineError(f"{text!r} is outside the {folder_label}", field, NOT_FOUND)
    return Path(os.path.abspath(folder)) / PurePosixPath(text)


def listed_name(path: str | os.PathLike, folder: str | os.PathLike) -> str | None:
    """``path``'s name relative to ``folder`` as written (a linked entry keeps the name it has
    in the folder), or None when it is not under it."""
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(folder)).as_posix()
    except ValueError:
        return None
