"""Writing images: atomically, never over an existing file, with the infotext embedded."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

NUMBERED = re.compile(r"^(\d{5})(?:-|\.)")  # "00012-345.png", or "00012.png" without a seed


def next_number(directory: Path) -> int:
    highest = -1
    if not directory.is_dir():
        return 0
    for entry in directory.iterdir():
        if m := NUMBERED.match(entry.name):
            highest = max(highest, int(m.group(1)))
    return highest + 1


def save_png(image: Image.Image, directory: str | os.PathLike, seed: int, infotext: str) -> Path:
    """Save as ``NNNNN-SEED.png`` (A1111's pattern) with the infotext in a ``parameters`` chunk.

    The file is written to a temporary name and hard-linked into place: a crash leaves no
    half-written image, and a name already taken (another writer, a race) is never replaced."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text("parameters", infotext)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=info)
            f.flush()
            os.fsync(f.fileno())
        return link_numbered(Path(tmp), directory, lambda number: f"{number:05d}-{seed}.png")
    finally:
        os.unlink(tmp)


def link_numbered(tmp: Path, directory: Path, name_for) -> Path:
    """Hard-link a finished temporary file to the first free ``name_for(number)``, counting up
    from the folder's next number. A taken name (another writer, a race) is never replaced."""
    number = next_number(directory)
    while True:
        final = directory / name_for(number)
        try:
            os.link(tmp, final)
            return final
        except FileExistsError:
            number += 1


def read_infotext(path: str | os.PathLike) -> str | None:
    with Image.open(path) as image:
        return image.info.get("parameters")
