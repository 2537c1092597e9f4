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
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents -> images in [0, 1], float32, (B, 3, H, W). Retries in float32 when half
    precision overflowed into NaN (a known failure of some VAEs in fp16)."""
    images = vae.decode(latents).float()
    if not torch.isfinite(images).all() and vae.dtype != torch.float32:
        images = vae.float().decode(latents.float()).float()
    return ((images + 1) / 2).clamp(0, 1)


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    array = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]
