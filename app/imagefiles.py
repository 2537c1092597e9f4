"""Image files the page writes and reads: file names from patterns, PNG/JPEG/WebP with the
generation parameters embedded, and reading them back from any of those (and from A1111's and
ComfyUI's PNGs).

PNG keeps the infotext in a ``parameters`` text chunk; JPEG and WebP keep it in EXIF
UserComment (tag 0x9286 in the Exif IFD), as ``UNICODE\\0`` + UTF-16BE text, which is what A1111
writes there and what A1111, sd-parsers and exiftool read.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from core.images import link_numbered

EXIF_IFD = 0x8769
USER_COMMENT = 0x9286
UNICODE_PREFIX = b"UNICODE\0"
ASCII_PREFIX = b"ASCII\0\0\0"
EXTENSIONS = {"png": ".png", "jpg": ".jpg", "webp": ".webp"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def inside_folders(path: str | os.PathLike, folders: Iterable[str | os.PathLike]) -> bool:
    """Whether ``path`` is one of ``folders`` or below one, links followed (a link inside a
    folder that points out of it is outside). A path that cannot be resolved is outside."""
    try:
        real = Path(path).expanduser().resolve()
        return any(real.is_relative_to(Path(folder).expanduser().resolve()) for folder in folders)
    except (OSError, ValueError, RuntimeError):
        return False
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f]+')
_TOKEN = re.compile(r"\[(\w+)\]")
MAX_NAME = 120


def user_comment(text: str) -> bytes:
    return UNICODE_PREFIX + text.encode("utf-16-be")


def decode_user_comment(raw: Any) -> str | None:
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, (bytes, bytearray)) or len(raw) < 8:
        return None
    prefix, body = bytes(raw[:8]), bytes(raw[8:])
    if prefix == UNICODE_PREFIX:
        # A1111 writes big-endian; a few tools write the file's byte order. Pick the one that
        # gives text (the other gives CJK noise or fails).
        for encoding in ("utf-16-be", "utf-16-le"):
            try:
                text = body.decode(encoding)
            except UnicodeDecodeError:
                continue
            if text.isprintable() or "\n" in text:
                return text.rstrip("\0")
        return body.decode("utf-16-be", errors="replace").rstrip("\0")
    if prefix in (ASCII_PREFIX, b"\0" * 8):
        return body.decode("utf-8", errors="replace").rstrip("\0")
    return bytes(raw).decode("utf-8", errors="replace").rstrip("\0")


def exif_bytes(infotext: str) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD)[USER_COMMENT] = user_comment(infotext)
    return exif.tobytes()


def sanitize(text: str, limit: int = MAX_NAME) -> str:
    text = _UNSAFE.sub("_", text).strip(" .")
    return text[:limit].rstrip(" .")


def prompt_words(prompt: str, count: int = 8) -> str:
    """The first words of a prompt for a file name: no extra-network tags, no weights."""
    words = [w for w in re.findall(r"[^\W_]+", re.sub(r"<[^>]*>", " ", prompt or "")) if not w.isdigit()]
    return " ".join(words[:count])


def expand_pattern(pattern: str, fields: dict[str, Any]) -> str:
    """``[seed]-[prompt_words]`` with ``fields``; an unknown token stays as written."""
    now = dt.datetime.now()
    values = {
        "date": now.date().isoformat(),
        "datetime": now.strftime("%Y%m%d%H%M%S"),
        "prompt_words": prompt_words(fields.get("prompt", "")),
        "prompt": fields.get("prompt", ""),
        **{k: v for k, v in fields.items() if v is not None},
    }

    def one(match: re.Match) -> str:
        key = match.group(1).lower()
        return sanitize(str(values[key]), 60) if key in values else match.group(0)

    return _TOKEN.sub(one, pattern)


def save_image(
    image: Image.Image,
    directory: str | os.PathLike,
    *,
    name: str = "",
    fmt: str = "png",
    infotext: str | None = None,
    chunks: dict[str, str] | None = None,
    quality: int = 90,
) -> Path:
    """Save as ``NNNNN-NAME.EXT`` (``NNNNN.EXT`` for an empty name) in ``directory``, with the
    infotext embedded. Written to a temporary file and hard-linked into place: no half-written
    file is ever visible, and an existing file is never replaced (the number moves on)."""
    fmt = "jpg" if fmt.lower() == "jpeg" else fmt.lower()
    if fmt not in EXTENSIONS:
        raise ValueError(f"image format {fmt!r}: use png, jpg or webp")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = sanitize(name)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=EXTENSIONS[fmt], dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            if fmt == "png":
                info = PngInfo()
                if infotext:
                    info.add_text("parameters", infotext)
                for key, value in (chunks or {}).items():
                    info.add_text(key, value)
                image.save(f, format="PNG", pnginfo=info)
            else:
                picture = image
                if fmt == "jpg" and picture.mode not in ("RGB", "L"):
                    picture = picture.convert("RGB")
                elif fmt == "webp" and picture.mode not in ("RGB", "RGBA"):
                    picture = picture.convert("RGBA" if "A" in picture.mode else "RGB")
                text = infotext or ""
                if chunks:
                    text = "\n".join([t for t in [text, *chunks.values()] if t])
                kwargs: dict[str, Any] = {"quality": int(quality)}
                if text:
                    kwargs["exif"] = exif_bytes(text)
                picture.save(f, format="JPEG" if fmt == "jpg" else "WEBP", **kwargs)
            f.flush()
            os.fsync(f.fileno())
        suffix = EXTENSIONS[fmt]
        return link_numbered(Path(tmp), directory,
                             lambda number: f"{number:05d}-{name}{suffix}" if name else f"{number:05d}{suffix}")
    finally:
        os.unlink(tmp)


# ---------------------------------------------------------------------------------- reading


def read_metadata(source: str | os.PathLike | Image.Image) -> dict[str, Any]:
    """Everything an image file says about how it was made.

    Returns ``{"parameters": A1111 infotext or None, "source": where it came from,
    "items": {other text chunks / EXIF fields}}``. ComfyUI's ``prompt``/``workflow`` chunks are
    turned into an A1111 infotext (see :mod:`app.comfy`) so it can be sent to the tabs."""
    if isinstance(source, Image.Image):
        return _metadata_of(source)
    with Image.open(source) as image:
        return _metadata_of(image)


def _metadata_of(image: Image.Image) -> dict[str, Any]:
    items: dict[str, Any] = {}
    for key, value in (image.info or {}).items():
        if key in ("exif", "icc_profile", "dpi", "gamma", "chromaticity", "srgb", "transparency", "duration",
                   "loop", "background", "progressive", "progression", "jfif", "jfif_version", "jfif_unit",
                   "jfif_density", "adobe", "adobe_transform", "interlace", "aspect", "xmp"):
            continue
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        items[key] = value
    parameters = items.pop("parameters", None)
    where = "PNG 'parameters' chunk" if parameters else None
    try:
        exif = image.getexif()
        comment = decode_user_comment(exif.get_ifd(EXIF_IFD).get(USER_COMMENT))
    except Exception:  # a broken EXIF block must not hide the rest
        comment = None
    if comment:
        if parameters is None:
            parameters, where = comment, "EXIF UserComment"
        else:
            items["EXIF UserComment"] = comment
    if parameters is None and ("prompt" in items or "workflow" in items):
        from app.comfy import infotext_from_comfy

        parameters = infotext_from_comfy(items.get("prompt"), items.get("workflow"))
        if parameters:
            where = "ComfyUI " + " and ".join(k for k in ("prompt", "workflow") if k in items)
    for key in ("prompt", "workflow"):
        if isinstance(items.get(key), str):
            try:
                items[key] = json.loads(items[key])
            except ValueError:
                pass
    return {"parameters": parameters, "source": where, "items": items,
            "size": f"{image.width}x{image.height}", "format": image.format}
