"""Running an image network over overlapping tiles, so that any image size fits in memory.

The image is cut into tiles of ``tile`` input pixels that overlap by at least ``overlap``; the
tiles are spread evenly, so the last one ends exactly at the image border. Each tile is run on
its own and its output pasted with a weight that, across every overlap, fades from one tile to
the next. The fade leaves out the quarter of the overlap closest to each tile's inner edge
(weight 0 there) and ramps linearly over the middle half: two neighbouring weights always add
up to 1, so there is no visible seam, and no output pixel takes anything from the ``overlap/4``
input pixels next to a cut, where a convolution sees the zero padding instead of the
neighbouring image. For a network whose receptive field reaches at most ``overlap/4`` input
pixels, tiled and whole-image outputs are therefore equal (up to float rounding).
"""
from __future__ import annotations

import math
from typing import Callable

import torch

ProgressFn = Callable[[int, int], None]


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with >= ``overlap`` overlap."""
    if tile <= 0 or length <= tile:
        return [0]
    overlap = max(0, min(overlap, tile // 2))
    count = math.ceil((length - overlap) / (tile - overlap))
    count = max(count, 2)
    span = length - tile
    return [round(i * span / (count - 1)) for i in range(count)]


def _ramp(distance: torch.Tensor, overlap: float) -> torch.Tensor:
    """Weight by distance from a tile's inner edge: 0 for the first quarter of the overlap,
    rising linearly over the middle half, 1 beyond it."""
    if overlap <= 0:
        return torch.ones_like(distance)
    return ((distance - overlap / 4) / (overlap / 2)).clamp(0.0, 1.0)


def axis_weights(starts: list[int], tile: int, length: int, scale: int) -> list[torch.Tensor]:
    """For each tile along one axis: its blending weights in output pixels."""
    size = min(tile, length)
    out_size = size * scale
    centre = torch.arange(out_size, dtype=torch.float64) + 0.5
    weights = []
    for i, start in enumerate(starts):
        w = torch.ones(out_size, dtype=torch.float64)
        if i > 0:
            shared = (starts[i - 1] + size - start) * scale
            w = w * _ramp(centre, shared)
        if i < len(starts) - 1:
            shared = (start + size - starts[i + 1]) * scale
            w = w * _ramp(out_size - centre, shared)
        weights.append(w.float())
    return weights


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    scale: int,
    tile: int,
    overlap: int,
    progress: ProgressFn | None = None,
) -> torch.Tensor:
    """``fn`` over ``image`` (1, C, H, W) in tiles; returns (1, C', H*scale, W*scale) float32 on the CPU.

    ``fn`` maps a (1, C, h, w) tensor to (1, C', h*scale, w*scale). ``tile <= 0`` or an image that
    fits in one tile runs in one piece. ``progress(done, total)`` is called after every tile; it may
    raise to stop the work."""
    _, _, height, width = image.shape
    ys = tile_starts(height, tile, overlap)
    xs = tile_starts(width, tile, overlap)
    total = len(ys) * len(xs)
    if total == 1:
        out = _checked(fn(image), height, width, scale).float().cpu()
        if progress:
            progress(1, 1)
        return out
    th, tw = min(tile, height), min(tile, width)
    wy = axis_weights(ys, tile, height, scale)
    wx = axis_weights(xs, tile, width, scale)
    result: torch.Tensor | None = None
    weight_sum = torch.zeros(1, height * scale, width * scale)
    done = 0
    for iy, y in enumerate(ys):
        for ix, x in enumerate(xs):
            piece = _checked(fn(image[:, :, y:y + th, x:x + tw]), th, tw, scale).float().cpu()[0]
            if result is None:
                result = torch.zeros(piece.shape[0], height * scale, width * scale)
            w = wy[iy][:, None] * wx[ix][None, :]
            ys_, xs_ = slice(y * scale, (y + th) * scale), slice(x * scale, (x + tw) * scale)
            result[:, ys_, xs_] += piece * w
            weight_sum[:, ys_, xs_] += w
            done += 1
            if progress:
                progress(done, total)
    assert result is not None
    return (result / weight_sum.clamp_min(1e-12)).unsqueeze(0)


def _checked(out: torch.Tensor, height: int, width: int, scale: int) -> torch.Tensor:
    if out.ndim != 4 or out.shape[0] != 1 or tuple(out.shape[2:]) != (height * scale, width * scale):
        from core.errors import EngineError

        raise EngineError(
            f"the upscaler returned a {tuple(out.shape)} tensor for a {width}x{height} input "
            f"(expected {width * scale}x{height * scale})"
        )
    return out
