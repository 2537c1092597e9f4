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


@torch.no_grad()
def encode_pixels(vae, images: torch.Tensor, tiled: bool | None = None, notes: list[str] | None = None) -> torch.Tensor:
    """Pictures in [-1, 1] (B, 3, H, W) -> scaled latents (the posterior mean), float32, on the
    VAE's device.

    ``tiled`` None encodes in tiles only when the whole would not fit in free memory. In half
    precision the encoder can overflow (past fp16's 65504: SDXL's VAE is known to) into inf,
    then NaN after a group norm; such a result is encoded again in float32. As for decoding
    (:func:`decode_latents`), the VAE then stays in float32; ``notes`` gets a line saying so."""
    from core.pipelines.vae_tiling import encode_tiled, needs_tiling

    device = vae.quant_conv.weight.device
    images = images.to(device)
    if tiled is None:
        tiled = needs_tiling(vae, images.shape[0] * images.shape[2] * images.shape[3], device)
    encode = (lambda v, x: encode_tiled(v, x)) if tiled else (lambda v, x: v.encode(x))
    latents = encode(vae, images).float()
    if not torch.isfinite(latents).all() and vae.dtype != torch.float32:
        precision = str(vae.dtype).removeprefix("torch.")
        latents = encode(vae.float(), images.float()).float()
        if notes is not None:
            notes.append(f"the VAE overflowed in {precision} while encoding the picture; it was encoded again in "
                         "float32 (the VAE stays in float32 for this model)")
    return latents


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    array = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in array]
