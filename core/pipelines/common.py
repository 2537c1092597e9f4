"""Pieces every pipeline shares: seeds, latents <-> pictures."""
from __future__ import annotations

import random

import numpy as np
import torch
from PIL import Image


def resolve_seed(seed: int) -> int:
    return random.randrange(2**32) if seed == -1 else seed


def _coding_plan(vae, batch: int, pixels: int, device, tiled: bool | None) -> tuple[bool, bool]:
    """(in tiles, one picture at a time) for coding ``batch`` pictures of ``pixels`` pixels: the
    whole batch in one piece when it fits in free memory, else picture by picture, each in tiles
    only when even one would not fit (tile sizes are planned for one picture)."""
    from core.pipelines.vae_tiling import needs_tiling

    if tiled is not None:
        return tiled, tiled
    if not needs_tiling(vae, batch * pixels, device):
        return False, False
    return needs_tiling(vae, pixels, device), True


def _each_picture(function, x: torch.Tensor, separately: bool) -> torch.Tensor:
    if not separately or x.shape[0] == 1:
        return function(x)
    return torch.cat([function(x[i:i + 1]) for i in range(x.shape[0])])


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, tiled: bool | None = None) -> torch.Tensor:
    """Scaled latents -> images in [0, 1], float32, (B, 3, H, W).

    ``tiled`` None decodes in tiles only when the whole would not fit in free memory (and a batch
    that does not fit picture by picture). Retries in float32 when half precision overflowed
    into NaN (a known failure of some VAEs in fp16)."""
    from core.pipelines import vae_tiling

    factor = vae.config.downsample_factor
    tiled, separately = _coding_plan(vae, latents.shape[0], latents.shape[2] * latents.shape[3] * factor**2,
                                     latents.device, tiled)

    def decode(v, z):
        return _each_picture(lambda one: vae_tiling.decode_tiled(v, one) if tiled else v.decode(one), z, separately)

    images = decode(vae, latents).float()
    if not torch.isfinite(images).all() and vae.dtype != torch.float32:
        images = decode(vae.float(), latents.float()).float()
    return ((images + 1) / 2).clamp(0, 1)


@torch.no_grad()
def encode_pixels(vae, images: torch.Tensor, tiled: bool | None = None, notes: list[str] | None = None) -> torch.Tensor:
    """Pictures in [-1, 1] (B, 3, H, W) -> scaled latents (the posterior mean), float32, on the
    VAE's device.

    ``tiled`` None encodes in tiles only when the whole would not fit in free memory (and a batch
    that does not fit picture by picture). In half precision the encoder can overflow (past
    fp16's 65504: SDXL's VAE is known to) into inf, then NaN after a group norm; such a result is
    encoded again in float32. As for decoding (:func:`decode_latents`), the VAE then stays in
    float32; ``notes`` gets a line saying so."""
    from core.pipelines import vae_tiling

    device = vae.device
    images = images.to(device)
    tiled, separately = _coding_plan(vae, images.shape[0], images.shape[2] * images.shape[3], device, tiled)

    def encode(v, x):
        return _each_picture(lambda one: vae_tiling.encode_tiled(v, one) if tiled else v.encode(one), x, separately)

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
