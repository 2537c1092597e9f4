"""Writing images: atomically, never over an existing file, with the infotext embedded."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from PIL import Image
from PIL.PngImagePlugin import PngInfo

NUMBERED = re.compile(r"^(\d{5})-")


def next_number(directory: Path) -> int:
    highest = -1
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
        number = next_number(directory)
        while True:
            final = directory / f"{number:05d}-{seed}.png"
            try:
                os.link(tmp, final)
                return final
            except FileExistsError:
                number += 1
    finally:
        os.unlink(tmp)


def read_infotext(path: str | os.PathLike) -> str | None:
    with Image.open(path) as image:
        return image.info.get("parameters")
