"""A deterministic judge of demo pictures: which colour, shape, size and position does a
picture show, and does that match its caption?

Steps: background = per-channel median of all pixels (the shape covers at most ~15%); the
shape = the largest connected region differing from it by more than ``THRESHOLD``; colour =
nearest palette colour to the region's median; size = bounding-box extent against the
midpoints of the nominal sizes; position = bounding-box centre in the 3x3 grid; shape = the
filled template (circle, square, triangle) drawn into the region's box with the best IoU.
``hollowness`` (background-like share of the shape's inner part) measures the LoRA's
outlined style. On generated ground truth every attribute is right (tests check this).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from core.training import shapes as S

THRESHOLD = 0.2  # max per-channel difference from the background, in [0, 1]
MIN_PIXELS = 6
ATTRIBUTES = ("colour", "shape", "size", "position", "background")
_PALETTE_NAMES = list(S.COLOURS)
_PALETTE = np.array([S.COLOURS[n] for n in _PALETTE_NAMES], np.float64) / 255.0
_SIZE_NAMES = list(S.SIZES)
_SIZE_LIMITS = [(a + b) / 2 for a, b in zip(list(S.SIZES.values())[:-1], list(S.SIZES.values())[1:])]


@dataclass
class Analysis:
    found: bool
    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    position: str | None = None
    background: str | None = None
    hollowness: float = 0.0
    pixels: int = 0

    def attributes(self) -> dict[str, str | None]:
        return {a: getattr(self, a) for a in ATTRIBUTES}


def nearest_colour(rgb: np.ndarray) -> str:
    return _PALETTE_NAMES[int(np.argmin(((_PALETTE - rgb[None]) ** 2).sum(1)))]


def to_float_image(image) -> np.ndarray:
    """PIL image, uint8 HWC array, or a CHW/HWC float tensor/array in [0, 1] -> HWC float64."""
    if hasattr(image, "convert"):
        image = np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)
    if image.dtype == np.uint8:
        return image.astype(np.float64) / 255.0
    return np.clip(image.astype(np.float64), 0.0, 1.0)


def analyse(image) -> Analysis:
    img = to_float_image(image)
    h, w, _ = img.shape
    background = np.median(img.reshape(-1, 3), axis=0)
    differs = np.abs(img - background).max(-1) > THRESHOLD
    labels, count = ndimage.label(differs)
    result = Analysis(found=False, background=nearest_colour(background))
    if count == 0:
        return result
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, count + 1))
    best = int(np.argmax(sizes)) + 1
    if sizes[best - 1] < MIN_PIXELS:
        return result
    # Holes (the outlined style) belong to the shape's region for its box and template.
    region = ndimage.binary_fill_holes(labels == best)
    ring = labels == best
    ys, xs = np.nonzero(region)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    # A shape cut by the picture's edge: extend the box past the edge to a square.
    bw, bh = x1 - x0, y1 - y0
    if bw < bh:
        if x0 == 0:
            x0 = x1 - bh
        elif x1 == w:
            x1 = x0 + bh
    elif bh < bw:
        if y0 == 0:
            y0 = y1 - bw
        elif y1 == h:
            y1 = y0 + bw
    extent = float(max(x1 - x0, y1 - y0))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    ious = {}
    for shape in S.SHAPES:
        # Stretched to the box; a hair smaller so pixel centres on its edge stay outside.
        template = S.shape_mask(shape, cx, cy, x1 - x0 - 0.01, size=h, height=y1 - y0 - 0.01)
        inter = np.logical_and(template, region).sum()
        union = np.logical_or(template, region).sum()
        ious[shape] = inter / max(union, 1)
    colour = nearest_colour(np.median(img[ring], axis=0))
    size = _SIZE_NAMES[int(np.searchsorted(_SIZE_LIMITS, extent))]
    row = S.ROWS[min(2, int(cy * 3 // h))]
    col = S.COLS[min(2, int(cx * 3 // w))]
    inner = ndimage.binary_erosion(region, iterations=4)
    hollow = float((~ring[inner]).mean()) if inner.any() else 0.0
    return Analysis(
        found=True, colour=colour, shape=max(ious, key=ious.get) if ious else None, size=size,
        position=f"{row} {col}", background=nearest_colour(background), hollowness=hollow, pixels=int(ring.sum()),
    )


def judge(images, prompts: list[str]) -> list[dict[str, float]]:
    """Per picture: 1.0/0.0 for each attribute matching its prompt and for ``all``, plus
    ``found`` and ``hollowness``."""
    out = []
    for image, prompt in zip(images, prompts):
        want = S.parse_caption(prompt)
        got = analyse(image)
        row = {a: float(got.attributes()[a] == want[a]) for a in ATTRIBUTES}
        row.update(all=float(all(row.values())), found=float(got.found), hollowness=got.hollowness)
        out.append(row)
    return out


def score(images, prompts: list[str]) -> dict[str, float]:
    """Fraction of pictures whose analysed attribute matches the prompt, per attribute, plus
    ``all`` (every attribute right), ``found`` and mean ``hollowness``."""
    rows = judge(images, prompts)
    n = max(len(rows), 1)
    return {k: sum(r[k] for r in rows) / n for k in (*ATTRIBUTES, "all", "found", "hollowness")}


def format_scores(scores: dict[str, float]) -> str:
    keys = ("colour", "shape", "size", "position", "background", "all")
    return "  ".join(f"{k} {100 * scores[k]:5.1f}%" for k in keys if k in scores)
