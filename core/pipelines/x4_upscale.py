"""The Stable Diffusion x4 upscaler (``x4-upscaler-ema``): a text-guided latent diffusion model
that turns a picture into one four times as wide and high.

How the checkpoint works (ldm's ``LatentUpscaleDiffusion``):

* the low-resolution picture itself (RGB in [-1, 1], not encoded) is the extra UNet input:
  noised to ``noise_level`` with its own schedule (``ImageConcatWithNoiseAugmentation``:
  betas ``linspace(sqrt(1e-4), sqrt(0.02), 1000) ** 2``, levels 0..350) and concatenated to the
  latent (4 + 3 = 7 channels); the integer noise level is also a class label (an embedding
  table added to the timestep embedding);
* the latent has the picture's own size: the f=4 VAE (scale 0.08333) decodes it at 4x;
* v-prediction, betas 1e-4..0.02, OpenCLIP ViT-H prompt (SD 2.x conditioning).

Noise: each image's generator (seeded with its seed) draws the latent noise first, then the
augmentation noise, then whatever the sampler asks for, as diffusers' pipeline does when given
the latents. Large inputs are cut into overlapping tiles that are upscaled one by one from
crops of the same whole-picture noise and feathered together in pixel space.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image

from core.errors import EngineError
from core.pipelines.common import decode_latents
from core.pipelines.guidance import build_guided_denoiser, prepare_prompt
from core.sampling.denoiser import DiscreteDenoiser
from core.sampling.noise import ImageNoise
from core.sampling.samplers import SAMPLERS, resolve_sampler_name
from core.sampling.schedules import AUTOMATIC, DiscreteSchedule, get_sigmas

SCALE = 4


def low_scale_alphas_cumprod(spec) -> torch.Tensor:
    start, end, _ = spec.low_scale
    betas = torch.linspace(start**0.5, end**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def augment(spec, low_res: torch.Tensor, noise: torch.Tensor, noise_level: int) -> torch.Tensor:
    """The low-resolution picture noised to ``noise_level`` (q_sample of the low-scale model)."""
    a = low_scale_alphas_cumprod(spec)[noise_level].item()
    return low_res * a**0.5 + noise.to(low_res) * (1 - a) ** 0.5


def _sampler(model, sampler: str, scheduler: str, steps: int):
    sampler_name, schedule_name = resolve_sampler_name(sampler)
    if scheduler and scheduler != AUTOMATIC:
        schedule_name = scheduler
    chosen = SAMPLERS[sampler_name]
    schedule = DiscreteSchedule(model.alphas_cumprod)
    sigmas = get_sigmas(schedule_name, chosen, schedule, steps, family=model.spec.family)
    dtype = torch.float64 if model.unet.dtype == torch.float64 else torch.float32
    return chosen, schedule, sigmas.to(model.alphas_cumprod.device, dtype)


class _Noise:
    """Per-image noise for one tile: the first draw is a crop of the whole picture's noise, later
    draws (ancestral samplers) continue each image's generator at the tile's shape."""

    def __init__(self, first: torch.Tensor, generators: list[torch.Generator]):
        self._first = first
        self.generators = generators
        self._used = False

    def first(self) -> torch.Tensor:
        self._used = True
        return self._first.clone()

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        if not self._used:
            self._used = True
            return self._first.to(like.device, like.dtype)
        out = torch.stack([torch.randn(like.shape[1:], generator=g) for g in self.generators])
        return out.to(like.device, like.dtype)


@torch.no_grad()
def x4_latents(
    model, conditioner, low_res: torch.Tensor, prompt: str = "", *, negative_prompt: str = "", noise_level: int = 20,
    steps: int = 25, cfg_scale: float = 9.0, seeds: list[int] | None = None, sampler: str = "DDIM",
    scheduler: str = AUTOMATIC, callback: Callable | None = None, noise=None,
) -> torch.Tensor:
    """low_res: (B, 3, h, w) in [-1, 1] -> the sampled latents (B, 4, h, w), scaled.
    ``noise`` (tiles): an object with ``first()``, callable like ImageNoise, and ``generators``."""
    spec = model.spec
    if not spec.is_upscaler:
        raise EngineError(f"{spec.label} checkpoint: not the x4 upscaler")
    max_level = spec.low_scale[2]
    if not 0 <= int(noise_level) <= max_level:
        raise EngineError(f"must be between 0 and {max_level}, got {noise_level!r}", "noise_level")
    b, _, h, w = low_res.shape
    seeds = list(seeds) if seeds is not None else [0] * b
    if len(seeds) != b:
        raise EngineError(f"{len(seeds)} given for {b} pictures", "seeds")
    chosen, schedule, sigmas = _sampler(model, sampler, scheduler, steps)
    device, dtype = sigmas.device, sigmas.dtype
    if noise is None:
        noise = ImageNoise(seeds, (model.vae.config.embed_dim, h, w), latent_factor=SCALE)
        first = noise.first()
        augmentation = torch.stack([torch.randn((3, h, w), generator=g) for g in noise.generators])
    else:
        first, augmentation = noise.first(), noise.augmentation
    guided = build_guided_denoiser(
        DiscreteDenoiser(model.unet, schedule, spec.prediction), conditioner,
        prepare_prompt(prompt, negative_prompt, steps), cfg_scale,
    )
    guided.image_conditioning = augment(spec, low_res.to(device, dtype), augmentation, int(noise_level))
    guided.class_labels = torch.full((b,), int(noise_level), dtype=torch.long, device=device)
    x = chosen.initial_latent(first.to(device, dtype), sigmas)

    def on_step(i, sigma, x, denoised):
        guided.step = i + 1
        if callback:
            callback(i, sigma, x, denoised)

    return chosen.sample(guided, x, sigmas, callback=on_step, noise=noise)


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def _ramp(length: int, overlap_before: int, overlap_after: int) -> torch.Tensor:
    """Blending weights along one axis of a tile: rising over the overlap with the tile before,
    falling over the overlap with the tile after (never exactly 0, so every pixel is covered)."""
    weights = torch.ones(length)
    if overlap_before:
        weights[:overlap_before] = torch.linspace(0, 1, overlap_before + 2)[1:-1]
    if overlap_after:
        weights[length - overlap_after:] = torch.linspace(1, 0, overlap_after + 2)[1:-1]
    return weights


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def tile_count(width: int, height: int, tile: int | None, tile_overlap: int) -> int:
    """How many tiles :func:`upscale_x4` cuts a ``width`` x ``height`` picture into."""
    if tile is None or (height <= tile and width <= tile):
        return 1
    overlap = min(tile_overlap, tile // 2)
    return len(_starts(height, tile, overlap)) * len(_starts(width, tile, overlap))


@torch.no_grad()
def upscale_x4(
    model, image: Image.Image, prompt: str = "", noise_level: int = 20, steps: int = 25, *,
    negative_prompt: str = "", cfg_scale: float = 9.0, seed: int = 0, sampler: str = "DDIM",
    scheduler: str = AUTOMATIC, tokenizer=None, conditioner=None, tile: int | None = 256, tile_overlap: int = 32,
    callback: Callable | None = None,
) -> Image.Image:
    """A picture -> the same picture four times as wide and high.

    ``tile``: inputs wider or higher than this many pixels are upscaled in overlapping tiles of
    this size (None: always in one piece). ``callback(i, sigma, x, denoised)`` as for txt2img,
    once per step of every tile."""
    from core.conditioning import make_conditioner
    from core.text.tokenizer import load_clip_tokenizer

    if conditioner is None:
        conditioner = make_conditioner(model, tokenizer or load_clip_tokenizer(pad_with_eos=False))
    low_res = _to_tensor(image)
    _, _, h, w = low_res.shape
    options = dict(
        negative_prompt=negative_prompt, noise_level=noise_level, steps=steps, cfg_scale=cfg_scale,
        sampler=sampler, scheduler=scheduler, callback=callback,
    )
    if tile is None or (h <= tile and w <= tile):
        latents = x4_latents(model, conditioner, low_res, prompt, seeds=[seed], **options)
        return _to_pil(decode_latents(model.vae, latents))[0]

    # The whole picture's noise, drawn in the same order as for one piece; tiles take crops.
    whole = ImageNoise([seed], (model.vae.config.embed_dim, h, w), latent_factor=SCALE)
    first = whole.first()
    augmentation = torch.randn((1, 3, h, w), generator=whole.generators[0])
    overlap = min(tile_overlap, tile // 2)
    out = torch.zeros(1, 3, h * SCALE, w * SCALE)
    total = torch.zeros(1, 1, h * SCALE, w * SCALE)
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    for y in ys:
        for x in xs:
            th, tw = min(tile, h - y), min(tile, w - x)
            noise = _Noise(first[:, :, y:y + th, x:x + tw], whole.generators)
            noise.augmentation = augmentation[:, :, y:y + th, x:x + tw]
            latents = x4_latents(
                model, conditioner, low_res[:, :, y:y + th, x:x + tw], prompt, seeds=[seed], noise=noise, **options
            )
            pixels = decode_latents(model.vae, latents).cpu()
            before_y = overlap * SCALE if y > 0 else 0
            after_y = overlap * SCALE if y + th < h else 0
            before_x = overlap * SCALE if x > 0 else 0
            after_x = overlap * SCALE if x + tw < w else 0
            weight = _ramp(th * SCALE, before_y, after_y)[:, None] * _ramp(tw * SCALE, before_x, after_x)[None, :]
            region = (slice(None), slice(None), slice(y * SCALE, (y + th) * SCALE), slice(x * SCALE, (x + tw) * SCALE))
            out[region] += pixels * weight
            total[region] += weight
    return _to_pil(out / total)[0]


def _to_pil(images: torch.Tensor) -> list[Image.Image]:
    from core.pipelines.common import to_pil

    return to_pil(images.clamp(0, 1))
