"""Pieces every pipeline shares: seeds, initial noise, latents <-> pictures."""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image


def resolve_seed(seed: int) -> int:
    return random.randrange(2**32) if seed == -1 else seed


def initial_noise(seeds: list[int], shape: tuple[int, ...]) -> torch.Tensor:
    """One noise tensor per seed, drawn on the CPU in float32, so that a seed makes the same
    image on every device (A1111's default "GPU-independent" behaviour)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s)) for s in seeds])


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
    """Scaled latents -> images in [0, 1], float32, (B, 3, H, W).

    ``tiled`` None decodes in tiles only when the whole would not fit in free memory. Retries
    in float32 when half precision overflowed into NaN (a known failure of some VAEs in fp16)."""
    from core.pipelines.vae_tiling import decode_tiled, needs_tiling

    if tiled is None:
        factor = vae.config.downsample_factor
        tiled = needs_tiling(vae, latents.shape[0] * latents.shape[2] * latents.shape[3] * factor**2, latents.device)
    decode = (lambda v, z: decode_tiled(v, z)) if tiled else (lambda v, z: v.decode(z))
    images = decode(vae, latents).float()
    if not torch.isfinite(images).all() and vae.dtype != torch.float32:
        images = decode(vae.float(), latents.float()).float()
    return ((images + 1) / 2).clamp(0, 1)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    array = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]
