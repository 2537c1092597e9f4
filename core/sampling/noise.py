"""Per-image noise, as A1111 draws it (its ``rng.ImageRNG`` with the "CPU" random source).

Each image has its own CPU generator seeded with its seed; the first draw is
``torch.randn(shape, generator=torch.Generator('cpu').manual_seed(seed))`` in float32, and every
later draw (the ancestral and SDE samplers' noise) continues that image's generator. So an image
does not depend on the batch it was made in, nor on the device. Two A1111 options shape the first
draw only:

* a variation seed (``subseeds``, ``subseed_strength``): the first noise is A1111's ``slerp`` from
  the seed's noise towards the subseed's noise;
* "resize seed from" (``seed_resize_from = (width, height)`` in pixels): the noise is drawn at the
  latent size of that old picture and pasted, centred, into the seed's own full-size noise (or
  cropped from its centre when the old size was larger), so a seed keeps its composition when the
  picture is resized.

A1111's "Eta noise seed delta" (reseeding the generators after the first draw) is not modelled.
"""
from __future__ import annotations

import torch


def _randn(shape, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(seed))


def slerp(val: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation, quirks included: for one image's (C, H, W) noise it
    normalises along dim 1 (each channel's columns are the interpolated vectors), and when the two
    are nearly parallel it falls back to ``low * val + high * (1 - val)``."""
    low_norm = low / torch.norm(low, dim=1, keepdim=True)
    high_norm = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_norm * high_norm).sum(1)
    if dot.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - val) * omega) / so).unsqueeze(1) * low + (torch.sin(val * omega) / so).unsqueeze(1) * high


class ImageNoise:
    """Noise for a batch of images: ``first()`` is the initial latent noise, (B, *shape);
    ``noise(like)`` is the next draw, as the samplers' ``noise`` source (on like's device, dtype).
    Called before ``first()``, ``noise(like)`` returns the first noise (A1111's ``rng.next()``)."""

    def __init__(self, seeds, shape, subseeds=None, subseed_strength: float = 0.0, seed_resize_from=(0, 0), latent_factor: int = 8):
        self.seeds = [int(seed) for seed in seeds]
        self.shape = tuple(int(n) for n in shape)
        self.subseeds = None if subseeds is None else [int(seed) for seed in subseeds]
        self.subseed_strength = float(subseed_strength)
        width, height = (int(n) for n in seed_resize_from)
        self.seed_resize_from = (width, height)
        self.latent_factor = latent_factor
        self.generators = [_seeded(seed) for seed in self.seeds]
        self._first: torch.Tensor | None = None

    def _noise_shape(self) -> tuple[int, ...]:
        width, height = self.seed_resize_from
        if width <= 0 or height <= 0:
            return self.shape
        return (self.shape[0], height // self.latent_factor, width // self.latent_factor)

    def _first_for(self, index: int, seed: int, generator: torch.Generator) -> torch.Tensor:
        noise_shape = self._noise_shape()
        resized = noise_shape != self.shape
        subnoise = None
        if self.subseeds is not None and self.subseed_strength != 0:
            subseed = self.subseeds[index] if index < len(self.subseeds) else 0
            subnoise = _randn(noise_shape, _seeded(subseed))
        # At the old size the seed's noise comes from a fresh generator; the image's own generator
        # then draws the full-size noise it is pasted into (A1111's order, which later draws follow).
        noise = _randn(noise_shape, _seeded(seed)) if resized else _randn(self.shape, generator)
        if subnoise is not None:
            noise = slerp(self.subseed_strength, noise, subnoise)
        if resized:
            full = _randn(self.shape, generator)
            dx = (self.shape[2] - noise_shape[2]) // 2
            dy = (self.shape[1] - noise_shape[1]) // 2
            w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
            h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
            tx, ty = max(dx, 0), max(dy, 0)
            sx, sy = max(-dx, 0), max(-dy, 0)
            full[:, ty : ty + h, tx : tx + w] = noise[:, sy : sy + h, sx : sx + w]
            noise = full
        return noise

    def first(self) -> torch.Tensor:
        """The initial noise, (B, *shape), float32 on the CPU. Drawn once; later calls return it again."""
        if self._first is None:
            self._first = torch.stack(
                [self._first_for(i, seed, generator) for i, (seed, generator) in enumerate(zip(self.seeds, self.generators))]
            )
        return self._first.clone()

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        expected = (len(self.seeds), *self.shape)
        if tuple(like.shape) != expected:
            raise ValueError(f"noise: asked for shape {tuple(like.shape)}, this batch's noise is {expected}")
        if self._first is None:
            out = self.first()
        else:
            out = torch.stack([_randn(self.shape, generator) for generator in self.generators])
        return out.to(like.device, like.dtype)
