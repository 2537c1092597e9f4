"""SD upscale (A1111's script): enlarge the picture with an upscaler, then redraw it tile by tile
with img2img at the checkpoint's working size, tiles overlapping and blended so no seam shows."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from PIL import Image

from core.params import GenerationParams
from core.pipelines.img2img import img2img, prepare_input
from core.upscaling.tiling import run_tiled


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)[None]


def _to_image(tensor: torch.Tensor) -> Image.Image:
    return Image.fromarray((tensor[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8))


def sd_upscale(model, conditioner, params: GenerationParams, image: Image.Image, seed: int, upscale_pixels,
               upscaler: str, scale: float, overlap: int = 64, callback=None) -> Image.Image:
    """One picture: upscale to ``scale`` times its size, then img2img in square tiles of
    ``params.width`` pixels (every tile with the same seed, as A1111 does)."""
    width, height = round(image.width * scale), round(image.height * scale)
    large = upscale_pixels(image.convert("RGB"), upscaler, (width, height))
    tile = params.width
    tile_params = dataclasses.replace(params, height=tile, resize_mode=0)

    def redraw(piece: torch.Tensor) -> torch.Tensor:
        h, w = piece.shape[2:]
        picture = _to_image(piece)
        work = dataclasses.replace(tile_params, width=max(8, w // 8 * 8), height=max(8, h // 8 * 8))
        prepared = prepare_input(model, work, picture)
        (out,) = img2img(model, conditioner, work, prepared, [seed], callback)
        return _to_tensor(out.resize((w, h), Image.LANCZOS))

    return _to_image(run_tiled(redraw, _to_tensor(large), 1, tile, overlap))
