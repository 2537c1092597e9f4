"""Upscaling one image by name: the entry point the UI, the REST API and SD-upscale call."""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from PIL import Image, ImageOps

from core.errors import NOT_FOUND, TOO_LARGE, EngineError
from core.params import MAX_SIZE
from core.upscaling.registry import (
    DEFAULT_MODELS_ROOT,
    ModelCache,
    ProgressFn,
    find_upscaler,
    load_upscaler,
)

# The largest result, in pixels: that of the largest picture the engine generates (8192x8192),
# the API's limit too. A model pass may overshoot it on the way (passes.MAX_PIXELS) before the
# final resize.
MAX_RESULT_PIXELS = MAX_SIZE * MAX_SIZE

# Input pixels per tile side and the overlap between tiles. 256 keeps an ESRGAN x4 pass (64
# channels at 1024x1024 after upsampling) to a few hundred MB per activation; 32 px of overlap
# leaves 8 px of context at every cut (see tiling.py) and blends over 16 px.
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32


def target_size(
    image_size: tuple[int, int], scale: float | None = None, size: tuple[int, int] | None = None
) -> tuple[tuple[int, int], bool]:
    """The exact output size, and whether the request is factor 1.

    ``scale``: each side times the factor, rounded. ``size``: (width, height) exactly; a side
    given as ``None`` or 0 follows the aspect ratio of the image."""
    width, height = image_size
    if scale is not None and size is not None:
        raise EngineError("give a scale or a target size, not both", "upscale")
    if scale is None and size is None:
        raise EngineError("give a scale or a target size", "upscale")
    if scale is not None:
        try:
            scale = float(scale)
        except (TypeError, ValueError):
            raise EngineError(f"scale {scale!r} is not a number", "upscale") from None
        if not math.isfinite(scale) or scale <= 0:
            raise EngineError(f"scale must be a positive number (got {scale})", "upscale")
        out = (max(1, round(width * scale)), max(1, round(height * scale)))
        identity = scale == 1
    else:
        try:
            want_w, want_h = size
            want_w = int(want_w or 0)
            want_h = int(want_h or 0)
        except (TypeError, ValueError):
            raise EngineError(f"target size {size!r} is not (width, height)", "upscale") from None
        if want_w < 0 or want_h < 0 or (want_w == 0 and want_h == 0):
            raise EngineError(f"target size {size!r} needs a positive width or height", "upscale")
        if want_w == 0:
            want_w = max(1, round(width * want_h / height))
        if want_h == 0:
            want_h = max(1, round(height * want_w / width))
        out = (want_w, want_h)
        identity = out == (width, height)
    if out[0] * out[1] > MAX_RESULT_PIXELS:
        raise EngineError(f"{out[0]}x{out[1]} is over the limit of {MAX_RESULT_PIXELS} pixels ({MAX_SIZE}x{MAX_SIZE})",
                          "upscale", TOO_LARGE)
    return out, identity


def upscale_image(
    image: Image.Image,
    upscaler_name: str,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    models_root: str | os.PathLike = DEFAULT_MODELS_ROOT,
    device: str | torch.device = "cpu",
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    *,
    dtype: torch.dtype | None = None,
    cache: ModelCache | None = None,
    progress: ProgressFn | None = None,
) -> Image.Image:
    """``image`` upscaled by ``scale`` or to ``size`` (width, height) with the upscaler named
    ``upscaler_name`` (a name from ``list_upscalers(models_root)``, or a model file path inside
    ``models_root``). Models run tiled (``tile`` input pixels, ``overlap`` between tiles; 0 for
    no tiling). Raises EngineError with a one-line message for anything the user can fix."""
    if not isinstance(image, Image.Image):
        raise EngineError(f"the input is not an image (got {type(image).__name__})", "upscale")
    if tile < 0 or overlap < 0:
        raise EngineError(f"tile ({tile}) and overlap ({overlap}) must not be negative", "upscale")
    out_size, identity = target_size(image.size, scale, size)
    info = find_upscaler(upscaler_name, models_root)
    upscaler = load_upscaler(info, device, dtype, cache)
    return upscaler.upscale(image, out_size, tile=int(tile), overlap=int(overlap), identity=identity, progress=progress)


def open_image(path: str | os.PathLike) -> Image.Image:
    """An image file, fully read and turned upright by its EXIF orientation; a file that is not
    an image gives a one-line EngineError naming it."""
    path = Path(path)
    if not path.is_file():
        raise EngineError("no such image file", kind=NOT_FOUND, label=str(path))
    try:
        with Image.open(path) as opened:
            opened.load()
            image = ImageOps.exif_transpose(opened)
            if image is opened:
                image = opened.copy()
    except Image.DecompressionBombError as e:
        raise EngineError(f"image too large ({e})", kind=TOO_LARGE, label=str(path)) from None
    except (OSError, ValueError, SyntaxError) as e:  # UnidentifiedImageError is an OSError
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EngineError(f"not an image ({text})", label=str(path)) from None
    return image


def postprocess_infotext(
    upscaler_name: str,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    source: str | None = None,
) -> str:
    """A1111's extras fields: ``Postprocess upscale by: 2, Postprocess upscaler: NAME`` (or
    ``Postprocess upscale to: WxH``). When the source image carried generation parameters whose
    last line holds settings, the fields are appended to that line so both read back."""
    from core.infotext import format_number, parse_infotext, quote

    if size is not None:
        how = f"Postprocess upscale to: {int(size[0])}x{int(size[1])}"
    else:
        how = f"Postprocess upscale by: {format_number(scale)}"
    fields = f"{how}, Postprocess upscaler: {quote(upscaler_name)}"
    if source and source.strip():
        parsed = parse_infotext(source)
        if set(parsed) - {"Prompt", "Negative prompt"}:
            return f"{source.rstrip()}, {fields}"
    return fields
