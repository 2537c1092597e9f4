"""The output folders as a browsable gallery: images by tab and date, newest first; deleting
moves a file to a trash folder (mirroring its path), from where it can be restored."""
from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from app.imagefiles import IMAGE_SUFFIXES, inside_folders

TRASH = "trash"
OUTSIDE = "_outside"  # trash sub-folder for files that were not under the output root
MAX_LISTED = 300


class GalleryError(ValueError):
    pass


@dataclass(frozen=True)
class Entry:
    path: Path
    tab: str
    date: str  # YYYY-MM-DD of the file's modification time
    mtime: float


def _date(mtime: float) -> str:
    return dt.date.fromtimestamp(mtime).isoformat()


def list_images(folders: dict[str, Path], tab: str | None = None, date: str | None = None,
                exclude: Path | None = None) -> list[Entry]:
    """Images in the tabs' folders (``{"txt2img": path, ...}``), newest first; ``tab``/``date``
    narrow the list (None or "All": every one). Hidden and temporary files are skipped."""
    entries: list[Entry] = []
    seen: set[Path] = set()
    for name, folder in folders.items():
        if tab not in (None, "", "All") and name != tab:
            continue
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            if path.suffix.lower() not in IMAGE_SUFFIXES or path.name.startswith("."):
                continue
            if exclude is not None and path.is_relative_to(exclude):
                continue
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            entry = Entry(path, name, _date(mtime), mtime)
            if date not in (None, "", "All") and entry.date != date:
                continue
            entries.append(entry)
    entries.sort(key=lambda e: (e.mtime, e.path.name), reverse=True)
    return entries


def dates(entries: list[Entry]) -> list[str]:
    return sorted({e.date for e in entries}, reverse=True)


def trash_path(root: Path, path: Path) -> Path:
    trash = root / TRASH
    path = path.resolve()
    try:
        relative = path.relative_to(root.resolve())
    except ValueError:
        relative = Path(OUTSIDE, *path.parts[1:])
    return trash / relative


def original_path(root: Path, trashed: Path) -> Path:
    relative = trashed.resolve().relative_to((root / TRASH).resolve())
    if relative.parts and relative.parts[0] == OUTSIDE:
        return Path(os.sep, *relative.parts[1:])
    return root / relative


def _free_name(path: Path) -> Path:
    if not path.exists():
        return path
    n = 1
    while True:
        candidate = path.with_name(f"{path.stem}-restored-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1


def delete_to_trash(root: Path, path: str | os.PathLike, folders: list[Path]) -> Path:
    """Move an output image to ``root/trash/<its path under root>``; returns where it went.
    Only files inside the output folders can be deleted (a page can send any path)."""
    path = Path(path)
    if not path.is_file():
        raise GalleryError(f"{path}: no such file (already deleted?)")
    if not inside_folders(path, folders) or path.suffix.lower() not in IMAGE_SUFFIXES:
        raise GalleryError(f"{path}: not an image in the output folders")
    target = _free_name(trash_path(root, path))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(target))
    return target


def restore(root: Path, trashed: str | os.PathLike) -> Path:
    """Move a trashed image back where it was (a taken name gets ``-restored-N``)."""
    trashed = Path(trashed)
    trash = (root / TRASH).resolve()
    if not trashed.is_file() or not trashed.resolve().is_relative_to(trash):
        raise GalleryError(f"{trashed}: not in the trash")
    target = _free_name(original_path(root, trashed))
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(trashed), str(target))
    return target


def list_trash(root: Path) -> list[Entry]:
    trash = root / TRASH
    return list_images({"trash": trash}) if trash.is_dir() else []
