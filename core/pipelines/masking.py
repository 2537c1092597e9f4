"""Picture-side helpers for img2img and inpainting: resizing, masks, fills, compositing.

Everything here works on PIL images; the sampling pipelines turn them into tensors.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from core.errors import NOT_FOUND, EngineError

# A1111's resize modes, by index and by name.
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
# A1111's "masked content" options (inpainting_fill).
FILL_MODES = ("fill", "original", "latent noise", "latent nothing")
# A1111's "mask mode" (inpainting_mask_invert) and "inpaint area" (inpaint_full_res) options.
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
INPAINT_AREAS = ("Whole picture", "Only masked")


def resize_image(image: Image.Image, width: int, height: int, mode: int = 0, resample=Image.LANCZOS) -> Image.Image:
    """A1111's resize modes. 0 stretch; 1 scale to cover, then crop the centre; 2 scale to fit,
    then fill the borders by stretching the image's edge rows/columns; 3 like 0 (the latent is
    resized instead, by the pipeline)."""
    if mode in (0, 3):
        return image.resize((width, height), resample)
    ratio, src_ratio = width / height, image.width / image.height
    if mode == 1:
        w, h = (width, round(width / src_ratio)) if ratio > src_ratio else (round(height * src_ratio), height)
        resized = image.resize((w, h), resample)
        canvas = Image.new(image.mode, (width, height))
        canvas.paste(resized, (width // 2 - w // 2, height // 2 - h // 2))
        return canvas
    w, h = (round(height * src_ratio), height) if ratio > src_ratio else (width, round(width / src_ratio))
    resized = image.resize((w, h), resample)
    canvas = Image.new(image.mode, (width, height))
    x, y = width // 2 - w // 2, height // 2 - h // 2
    canvas.paste(resized, (x, y))
    if ratio > src_ratio and x > 0:  # fill left and right from the edge columns
        canvas.paste(resized.resize((x, h), Image.NEAREST, box=(0, 0, 1, h)), (0, y))
        canvas.paste(resized.resize((width - x - w, h), Image.NEAREST, box=(w - 1, 0, w, h)), (x + w, y))
    elif ratio < src_ratio and y > 0:
        canvas.paste(resized.resize((w, y), Image.NEAREST, box=(0, 0, w, 1)), (x, 0))
        canvas.paste(resized.resize((w, height - y - h), Image.NEAREST, box=(0, h - 1, w, h)), (x, y + h))
    return canvas


def open_image(source, field: str = "image") -> Image.Image:
    """A path or PIL image -> an RGB image, or EngineError naming the field."""
    if isinstance(source, Image.Image):
        return source
    try:
        with Image.open(source) as image:
            image.load()
            return image
    except FileNotFoundError:
        raise EngineError(f"{source}: no such file", field, NOT_FOUND) from None
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise EngineError(f"{source}: not a readable image ({type(e).__name__})", field=field) from None


def flatten(image: Image.Image) -> Image.Image:
    """RGB, with transparency composited onto black as A1111 does."""
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def prepare_mask(mask: Image.Image, size: tuple[int, int], invert: bool, blur: int, notes: list[str]) -> Image.Image:
    """A drawn sketch or uploaded mask -> an L mask (white = repaint) at the image size, blurred.

    A sketch with transparency counts its painted (opaque) pixels; a mask of another size is
    stretched to the image with a note."""
    if mask.mode in ("RGBA", "LA") and mask.getextrema()[-1][0] < 255:
        mask = mask.getchannel("A")
    mask = mask.convert("L")
    if mask.size != size:
        notes.append(f"mask was {mask.width}x{mask.height}, resized to the image's {size[0]}x{size[1]}")
        mask = mask.resize(size, Image.LANCZOS)
    if invert:
        mask = ImageOps.invert(mask)
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return mask


def masked_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The bounding box of the mask, grown by ``padding`` and then to the aspect ratio of the
    working size (A1111's "only masked" crop). None for an empty mask."""
    box = mask.point(lambda v: 255 if v > 0 else 0).getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    W, H = mask.size
    x1, y1, x2, y2 = max(x1 - padding, 0), max(y1 - padding, 0), min(x2 + padding, W), min(y2 + padding, H)
    ratio = width / height
    w, h = x2 - x1, y2 - y1
    if w / h < ratio:  # too narrow: widen
        x1, x2 = _grow_span(x1, x2, round(h * ratio), W)
    else:
        y1, y2 = _grow_span(y1, y2, round(w / ratio), H)
    return x1, y1, x2, y2


def _grow_span(start: int, end: int, length: int, limit: int) -> tuple[int, int]:
    """Grow ``start..end`` to ``length`` (at most ``limit``) keeping its centre, then shift it
    back inside ``0..limit``."""
    grow = min(limit, length) - (end - start)
    start -= grow // 2
    end += grow - grow // 2
    if start < 0:
        end, start = end - start, 0
    if end > limit:
        start, end = max(start - (end - limit), 0), limit
    return start, end


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """"fill": replace the masked area by ever-blurrier copies of the surrounding colours, so the
    model starts from the neighbourhood's colour rather than from what was there."""
    rgba = Image.new("RGBA", image.size)
    keep = Image.new("RGBA", image.size)
    keep.paste(image.convert("RGBA"), mask=ImageOps.invert(mask.convert("L")))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = keep.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            rgba.alpha_composite(blurred)
    filled = rgba.convert("RGB")
    return Image.composite(filled, image.convert("RGB"), mask.point(lambda v: 255 if v > 127 else 0))


def composite(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """Paste the result into the original through the (blurred) mask: where the mask is 0 the
    original pixels come through unchanged, bit for bit."""
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), mask.convert("L"))


@dataclass
class OutpaintCanvas:
    image: Image.Image
    mask: Image.Image


def outpaint_canvas(image: Image.Image, pixels: int, directions: tuple[str, ...], overlap: int = 8) -> OutpaintCanvas:
    """Grow the canvas by ``pixels`` (rounded up to a multiple of 8) towards each direction
    (left, right, up, down). The new area is masked, plus ``overlap`` pixels into the
    original so the seam is repainted; new pixels start as stretched edge colours."""
    known = {"left", "right", "up", "down"}
    bad = [d for d in directions if d not in known]
    if bad or not directions:
        raise EngineError(f"use some of {', '.join(sorted(known))}, got {list(directions)}", "outpaint directions")
    if pixels <= 0:
        raise EngineError(f"must be positive, got {pixels}", "outpaint pixels")
    pixels = -(-pixels // 8) * 8
    left, right = (pixels if "left" in directions else 0), (pixels if "right" in directions else 0)
    up, down = (pixels if "up" in directions else 0), (pixels if "down" in directions else 0)
    W, H = image.width + left + right, image.height + up + down
    # Start from the image stretched over the whole canvas (its edges extended), then the original on top.
    canvas = resize_image(image.convert("RGB"), W, H, 0)
    arr = np.asarray(canvas).copy()
    src = np.asarray(image.convert("RGB"))
    arr[up:up + image.height, left:left + image.width] = src
    for y in range(up):  # extend edge rows and columns outward
        arr[y, left:left + image.width] = src[0]
    for y in range(up + image.height, H):
        arr[y, left:left + image.width] = src[-1]
    for x in range(left):
        arr[:, x] = arr[:, left]
    for x in range(left + image.width, W):
        arr[:, x] = arr[:, left + image.width - 1]
    mask = np.full((H, W), 255, np.uint8)
    x1 = left + (overlap if left else 0)
    y1 = up + (overlap if up else 0)
    x2 = left + image.width - (overlap if right else 0)
    y2 = up + image.height - (overlap if down else 0)
    mask[y1:y2, x1:x2] = 0
    return OutpaintCanvas(Image.fromarray(arr), Image.fromarray(mask, "L"))
