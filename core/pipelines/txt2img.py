"""Text to image: encode the prompts, sample from seeded noise, decode."""
from __future__ import annotations

from typing import Callable

import torch

from core.conditioning import encode_prompts
from core.params import GenerationParams
from core.pipelines.common import decode_latents, initial_noise
from core.sampling.denoiser import CFGDenoiser, DiscreteDenoiser
from core.sampling.samplers import SAMPLERS
from core.sampling.schedules import DiscreteSchedule


@torch.no_grad()
def sample_latents(model, tokenizer, params: GenerationParams, seeds: list[int], callback: Callable | None = None) -> torch.Tensor:
    """One batch: len(seeds) images with the same prompt. Returns the final (scaled) latents."""
    device = model.alphas_cumprod.device
    n = len(seeds)
    context = encode_prompts(model.text_encoder, tokenizer, [params.prompt, params.negative_prompt], params.clip_skip)
    cond = context[:1].expand(n, -1, -1)
    uncond = context[1:].expand(n, -1, -1)
    schedule = DiscreteSchedule(model.alphas_cumprod)
    denoiser = CFGDenoiser(DiscreteDenoiser(model.unet, schedule, model.spec.prediction), cond, uncond, params.cfg_scale)
    sampler = SAMPLERS[params.sampler]
    # Sampling arithmetic runs in float32 even for half-precision models (float64 only when the
    # model is float64, as in the parity tests).
    dtype = torch.float64 if model.unet.dtype == torch.float64 else torch.float32
    sigmas = sampler.sigmas(schedule, params.steps).to(device, dtype)
    factor = model.vae.config.downsample_factor
    noise = initial_noise(seeds, (model.vae.config.embed_dim, params.height // factor, params.width // factor)).to(device, dtype)
    x = sampler.initial_latent(noise, sigmas)
    return sampler.function(denoiser, x, sigmas, callback)


def txt2img(model, tokenizer, params: GenerationParams, seeds: list[int], callback: Callable | None = None) -> torch.Tensor:
    """-> images in [0, 1], (len(seeds), 3, height, width)."""
    return decode_latents(model.vae, sample_latents(model, tokenizer, params, seeds, callback))
