"""Live previews: a cheap picture of a latent, without the VAE.

Each latent channel maps to RGB by a fixed linear combination plus a bias, fitted by
regressing decoded pixels on latents: the running model's ``LatentFormat`` holds them (its
family's, core/models/families.py, or the checkpoint's own, as the demo model's metadata).
It costs a Cx3 matrix product per latent pixel, so it can run every few steps. The page and
the API both use ``latent_preview``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from core.models.families import SD1_LATENT, LatentFormat


def to_numpy(latent: Any) -> np.ndarray | None:
    """The first image of a (B, C, h, w) batch (or a (C, h, w) latent) as float32 numpy."""
    if latent is None:
        return None
    try:
        if hasattr(latent, "detach"):  # a torch tensor: move to the CPU only what is shown
            latent = latent.detach()[0] if latent.dim() == 4 else latent.detach()
            latent = latent.to("cpu").float().numpy()
        array = np.asarray(latent, dtype=np.float32)
    except Exception:
        return None
    if array.ndim == 4:
        array = array[0]
    return array if array.ndim == 3 else None


def latent_rgb(latent: Any, latent_format: LatentFormat | None = None) -> np.ndarray | None:
    """(h, w, 3) uint8 colours of the latent's first image through the format's preview map
    (SD 1.x's when none is given); None when the latent does not fit that format."""
    latent_format = latent_format or SD1_LATENT
    array = to_numpy(latent)
    if array is None or array.shape[0] != latent_format.channels or not latent_format.rgb_factors:
        return None
    if not np.isfinite(array).all():
        return None
    factors = np.asarray(latent_format.rgb_factors, dtype=np.float32)
    rgb = np.einsum("chw,cr->hwr", array, factors) + np.asarray(latent_format.rgb_bias, dtype=np.float32)
    return np.clip((rgb + 1.0) * 127.5, 0, 255).round().astype(np.uint8)


def latent_preview(latent: Any, latent_format: LatentFormat | None = None, scale: int = 8) -> Image.Image | None:
    """An RGB PIL image approximating the latent's picture, ``scale`` times the latent size;
    None when the latent does not fit the format (channels) or is not finite."""
    rgb = latent_rgb(latent, latent_format)
    if rgb is None:
        return None
    image = Image.fromarray(rgb, "RGB")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.BILINEAR)
    return image
