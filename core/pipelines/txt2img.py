"""Text to image: seeded noise -> sampler over the guided denoiser -> VAE decode."""
from __future__ import annotations

from typing import Callable

import torch

from core.conditioning import TextConditioner
from core.params import GenerationParams
from core.pipelines.common import decode_latents
from core.pipelines.guidance import build_guided_denoiser, prepare_prompt
from core.sampling.denoiser import DiscreteDenoiser
from core.sampling.noise import ImageNoise
from core.sampling.samplers import SAMPLERS, resolve_sampler_name
from core.sampling.schedules import AUTOMATIC, DiscreteSchedule, get_sigmas


def sampling_dtype(model) -> torch.dtype:
    """Sampler arithmetic runs in float32 even for half-precision models (float64 only when the
    model itself is float64, as in the parity tests)."""
    return torch.float64 if model.unet.dtype == torch.float64 else torch.float32


def sampler_and_sigmas(model, params: GenerationParams, steps: int):
    sampler_name, schedule_name = resolve_sampler_name(params.sampler)
    if params.scheduler and params.scheduler != AUTOMATIC:
        schedule_name = params.scheduler
    sampler = SAMPLERS[sampler_name]
    schedule = DiscreteSchedule(model.alphas_cumprod)
    sigmas = get_sigmas(schedule_name, sampler, schedule, steps, family=model.spec.family.split("-")[0])
    return sampler, schedule, sigmas.to(model.alphas_cumprod.device, sampling_dtype(model))


def image_noise(model, params: GenerationParams, seeds: list[int], subseeds: list[int] | None) -> ImageNoise:
    factor = model.vae.config.downsample_factor
    shape = (model.vae.config.embed_dim, params.height // factor, params.width // factor)
    return ImageNoise(
        seeds, shape, subseeds=subseeds, subseed_strength=params.subseed_strength,
        seed_resize_from=(params.seed_resize_from_w, params.seed_resize_from_h), latent_factor=factor,
    )


def sampler_options(params: GenerationParams) -> dict:
    return {k: v for k, v in (("eta", params.eta), ("s_noise", params.s_noise)) if v is not None}


@torch.no_grad()
def sample_latents(
    model, conditioner: TextConditioner, params: GenerationParams, seeds: list[int],
    callback: Callable | None = None, subseeds: list[int] | None = None, *,
    init_latent: torch.Tensor | None = None, denoising_strength: float = 1.0,
    keep_mask: torch.Tensor | None = None, image_conditioning: torch.Tensor | None = None,
    steps: int | None = None,
) -> torch.Tensor:
    """One batch: len(seeds) images of the same prompt. Returns the final (scaled) latents.

    With ``init_latent`` this is img2img: the run covers the last int(steps * strength) steps of
    the schedule (A1111's rule), starting from the init latent noised to that level.
    ``keep_mask`` (1 = keep) blends the init latent back at every step (inpainting with a
    regular checkpoint); ``image_conditioning`` feeds an inpainting checkpoint's extra channels."""
    steps = steps or params.steps
    sampler, schedule, sigmas = sampler_and_sigmas(model, params, steps)
    prepared = prepare_prompt(params.prompt, params.negative_prompt, steps)
    guided = build_guided_denoiser(DiscreteDenoiser(model.unet, schedule, model.spec.prediction), conditioner, prepared, params.cfg_scale)
    if model.unet.config.in_channels > model.vae.config.embed_dim and image_conditioning is None:
        image_conditioning = blank_inpainting_conditioning(model, len(seeds), params.height, params.width)
    guided.image_conditioning = image_conditioning
    noise = image_noise(model, params, seeds, subseeds)
    first = noise.first().to(sigmas.device, sigmas.dtype)
    if init_latent is None:
        x = sampler.initial_latent(first, sigmas)
    else:
        t_enc = int(min(denoising_strength, 0.999) * steps)
        sigmas = sigmas[len(sigmas) - t_enc - 2:]
        init_latent = init_latent.to(sigmas.device, sigmas.dtype)
        x = init_latent + first * sigmas[0]
        if keep_mask is not None:
            guided.init_latent, guided.keep_mask = init_latent, keep_mask.to(init_latent)

    def on_step(i, sigma, x, denoised):
        # Prompt editing counts sampler steps, not model calls; from 0 in img2img too, as A1111.
        guided.step = i + 1
        if callback:
            callback(i, sigma, x, denoised)

    out = sampler.sample(guided, x, sigmas, callback=on_step, noise=noise, **sampler_options(params))
    if keep_mask is not None:
        out = init_latent * guided.keep_mask + out * (1 - guided.keep_mask)
    return out


@torch.no_grad()
def blank_inpainting_conditioning(model, n: int, height: int, width: int) -> torch.Tensor:
    """An inpainting checkpoint used for txt2img: "repaint everything" (mask of ones) over the
    latent of a mid-grey picture, as A1111 does."""
    grey = torch.zeros(1, 3, height, width, device=model.alphas_cumprod.device)
    latent = model.vae.encode(grey).float()
    mask = torch.ones_like(latent[:, :1])
    return torch.cat([mask, latent], dim=1).expand(n, -1, -1, -1)


def txt2img(model, conditioner: TextConditioner, params: GenerationParams, seeds: list[int], callback=None, subseeds=None) -> torch.Tensor:
    """-> images in [0, 1], (len(seeds), 3, height, width)."""
    return decode_latents(model.vae, sample_latents(model, conditioner, params, seeds, callback, subseeds))
