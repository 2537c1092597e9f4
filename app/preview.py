"""Live previews: a cheap picture of a latent, without the VAE.

Each of SD 1.x's four latent channels maps to RGB by a fixed linear combination (the widely
used "approximate cheap" factors, fitted by regressing decoded pixels on latents). It costs a
4x3 matrix product per latent pixel, so it can run every few steps; the picture is 1/8 of the
output's size and is enlarged for display.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

# rows: latent channels 0..3; columns: R, G, B
SD1_LATENT_RGB = np.array([
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
], dtype=np.float32)


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


def latent_preview(latent: Any, scale: int = 8) -> Image.Image | None:
    """An RGB PIL image approximating the latent's picture, ``scale`` times the latent size;
    None when the latent is not a 4-channel SD latent."""
    array = to_numpy(latent)
    if array is None or array.shape[0] != 4 or not np.isfinite(array).all():
        return None
    rgb = np.einsum("chw,cr->hwr", array, SD1_LATENT_RGB)
    rgb = np.clip((rgb + 1.0) * 127.5, 0, 255).astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.BILINEAR)
    return image
