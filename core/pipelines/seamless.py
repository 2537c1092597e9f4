"""Seamless tiling (A1111's "Tiling"): for one job, the convolutions of the UNet and the VAE pad
circularly, so the picture's left edge continues its right edge and its top its bottom, and
copies of it laid side by side show no seam.

Only the padding changes, so the weights (and a LoRA merged into them) are untouched; the
previous padding of every convolution comes back when the job ends, also when it fails or is
interrupted. On the CPU, ``core.models.convolution.Conv2d`` keeps its weights arranged for a
oneDNN kernel that pads with zeros: it takes nn.Conv2d's own path whenever ``padding_mode`` is
not "zeros" (``Conv2d._packable``), so a tiled job pads circularly there too.

A UNet compiled with --compile (core/speed.py) sees the change too: torch.compile guards on
each convolution's padding mode, so the first tiled job compiles the UNet again (and keeps
both versions), at the cost of that compilation.

Two places stay as A1111 has them: the VAE encoder's downsampling pads its right and bottom
edge with zeros by hand (img2img's encoding is not seamless there), and a picture decoded in
tiles (``vae_tiling``, for sizes that do not fit in memory at once) wraps each tile on itself.
"""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

from torch import nn

CIRCULAR = "circular"


def padded_convolutions(model) -> list[nn.Conv2d]:
    """The convolutions of ``model``'s UNet and VAE that pad at all: a 1x1 convolution (or the
    VAE's downsampling, padded by hand) reads no neighbours, and circular padding of nothing
    would only add a copy of its input."""
    return [module for part in (model.unet, model.vae) for module in part.modules()
            if isinstance(module, nn.Conv2d) and any(module.padding) and not isinstance(module.padding, str)]


@contextlib.contextmanager
def seamless_tiling(models: Iterable, tiling: bool) -> Iterator[None]:
    """With ``tiling``, every padded convolution of each of ``models`` (LatentDiffusion: its UNet
    and VAE; the refiner of a job too) pads circularly inside the block; the padding each had
    before comes back on the way out, whatever ends the block. Without ``tiling``, nothing
    changes."""
    if not tiling:
        yield
        return
    previous = [(conv, conv.padding_mode) for model in models for conv in padded_convolutions(model)]
    try:
        for conv, _ in previous:
            conv.padding_mode = CIRCULAR
        yield
    finally:
        for conv, mode in previous:
            conv.padding_mode = mode
