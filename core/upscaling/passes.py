"""A1111's way of reaching a size with a model of fixed factor, shared by the model kinds.

The model is applied while the image is smaller than the target (at most three passes, as
A1111), then the result is resized to the exact target with Lanczos. A factor-1 request runs the
model once (1x models are restorers: deblur, dejpeg). Alpha does not go through the model: it is
resized with Lanczos and put back.
"""
from __future__ import annotations

from typing import Callable

from PIL import Image

from core.errors import EngineError

MAX_PASSES = 3
# Largest image (in pixels) any pass may produce: 16384 x 16384. Beyond that the float buffers
# of one pass alone take over 4 GB.
MAX_PIXELS = 16384 * 16384


def plan_passes(size: tuple[int, int], target: tuple[int, int], scale: int, identity: bool) -> int:
    """How many model passes reach ``target`` from ``size``; checks no pass grows too large."""
    width, height = size
    passes = 0
    while passes < MAX_PASSES:
        if width >= target[0] and height >= target[1] and not (identity and passes == 0):
            break
        new = (width * scale, height * scale)
        if new[0] * new[1] > MAX_PIXELS:
            raise EngineError(
                f"upscale: a {scale}x pass on {width}x{height} would make a {new[0]}x{new[1]} image, "
                f"over the limit of {MAX_PIXELS} pixels"
            )
        width, height = new
        passes += 1
        if scale == 1:
            break
    return passes


def upscale_in_passes(
    image: Image.Image,
    size: tuple[int, int],
    scale: int,
    identity: bool,
    one_pass: Callable[[Image.Image], Image.Image],
    mode: str = "RGB",
) -> Image.Image:
    """``image`` to exactly ``size`` through ``one_pass`` (which multiplies both sides by
    ``scale``), in ``mode`` ("RGB" or "L"); an alpha channel is resized separately."""
    alpha = None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        image = rgba
    work = image.convert(mode) if image.mode != mode else image
    for _ in range(plan_passes(work.size, size, scale, identity)):
        before = work.size
        work = one_pass(work)
        if work.size == before:
            break
    if work.size != tuple(size):
        work = work.resize(tuple(size), resample=Image.Resampling.LANCZOS)
    if alpha is not None:
        alpha = alpha.resize(tuple(size), resample=Image.Resampling.LANCZOS) if alpha.size != tuple(size) else alpha
        work = work.convert("RGBA" if mode == "RGB" else "LA")
        work.putalpha(alpha)
    return work
