"""The sampling run every job shares (txt2img, img2img and inpainting, hires fix, SD upscale,
training previews): seeded noise -> sampler over the guided denoiser -> latents.

With ``init_latent`` the run starts part-way (img2img). An SDXL refiner (or any second
checkpoint) can take over part-way, as A1111 does it: the same sampler run continues, and from
the first model call whose noise level is at or past ``switch_at`` of the schedule (timestep t
of the current sigma, done fraction (999 - t) / 1000) the second model and its own prompt
encoding are used.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from core.conditioning import TextConditioner
from core.errors import EngineError
from core.params import GenerationParams
from core.pipelines.common import encode_pixels
from core.pipelines.guidance import build_guided_denoiser, prepare_prompt
from core.sampling.noise import ImageNoise
from core.sampling.flow import flow_sampler
from core.sampling.samplers import SAMPLERS, resolve_sampler_name
from core.sampling.schedules import AUTOMATIC, DiscreteSchedule, get_sigmas
from core.speed import arranged_while_sampling


def sampling_dtype(model) -> torch.dtype:
    """Sampler arithmetic runs in float32 even for half-precision models (float64 only when the
    model itself is float64, as in the parity tests)."""
    return torch.float64 if model.unet.dtype == torch.float64 else torch.float32


def sampler_and_sigmas(model, params: GenerationParams, steps: int):
    """The sampler, the model's noise schedule for this picture size (FLUX dev's shift depends
    on it) and the sigmas the sampler visits."""
    sampler_name, schedule_name = resolve_sampler_name(params.sampler)
    if params.scheduler and params.scheduler != AUTOMATIC:
        schedule_name = params.scheduler
    sampler = SAMPLERS[sampler_name]
    if model.spec.family_info.flow is not None:
        sampler = flow_sampler(sampler)  # refuses those made for variance-exploding noise
    schedule = model.noise_schedule(params.height, params.width)
    sigmas = get_sigmas(schedule_name, sampler, schedule, steps, family=model.spec.family)
    return sampler, schedule, sigmas.to(model.device, sampling_dtype(model))


def image_noise(model, params: GenerationParams, seeds: list[int], subseeds: list[int] | None) -> ImageNoise:
    factor = model.vae.config.downsample_factor
    shape = (model.vae.config.embed_dim, params.height // factor, params.width // factor)
    return ImageNoise(
        seeds, shape, subseeds=subseeds, subseed_strength=params.subseed_strength,
        seed_resize_from=(params.seed_resize_from_w, params.seed_resize_from_h), latent_factor=factor,
    )


@dataclass
class Refiner:
    """The second stage of a job: ``model`` and its conditioner (core.conditioning.make_conditioner)
    take over once ``switch_at`` of the denoising is done. ``used`` tells whether it did.
    ``on_switch`` runs just before the refiner is first called (the engine moves the models
    between the device and CPU memory there)."""

    model: object
    conditioner: object
    switch_at: float = 0.8
    used: bool = False
    on_switch: Callable[[], None] | None = None


class RefinerSwitch:
    """The guided denoiser the sampler calls: the first model's until the switch point, then the
    refiner's (built when first needed, so that its prompts are encoded only if it runs)."""

    def __init__(self, first, make_second: Callable, switch_at: float, schedule: DiscreteSchedule, refiner: Refiner):
        self.first = first
        self.second = None
        self.make_second = make_second
        self.switch_at = switch_at
        self.sigmas = schedule.sigmas
        self.refiner = refiner
        self._step = 0

    @property
    def step(self) -> int:
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        self._step = value
        self.first.step = value
        if self.second is not None:
            self.second.step = value

    def done_fraction(self, sigma: torch.Tensor) -> float:
        """A1111's measure: the training timestep nearest to the current noise level."""
        level = float(torch.as_tensor(sigma).max())
        t = int(torch.argmin((self.sigmas.double() - level).abs()))
        return (len(self.sigmas) - 1 - t) / len(self.sigmas)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.second is None and self.done_fraction(sigma) >= self.switch_at:
            if self.refiner.on_switch is not None:
                self.refiner.on_switch()
            self.second = self.make_second()
            self.second.step = self._step
            self.second.init_latent, self.second.keep_mask = self.first.init_latent, self.first.keep_mask
            self.refiner.used = True
        return (self.second or self.first)(x, sigma)


def sampler_options(params: GenerationParams) -> dict:
    return {k: v for k, v in (("eta", params.eta), ("s_noise", params.s_noise)) if v is not None}


@torch.no_grad()
def sample_latents(
    model, conditioner: TextConditioner, params: GenerationParams, seeds: list[int],
    callback: Callable | None = None, subseeds: list[int] | None = None, *,
    init_latent: torch.Tensor | None = None, denoising_strength: float = 1.0,
    keep_mask: torch.Tensor | None = None, image_conditioning: torch.Tensor | None = None,
    steps: int | None = None, refiner: Refiner | None = None,
) -> torch.Tensor:
    """One batch: len(seeds) images of the same prompt. Returns the final (scaled) latents.

    With ``init_latent`` this is img2img: the run covers the last int(steps * strength) steps of
    the schedule (A1111's rule), starting from the init latent noised to that level.
    ``keep_mask`` (1 = keep) blends the init latent back at every step (inpainting with a
    regular checkpoint); ``image_conditioning`` feeds an inpainting checkpoint's extra channels."""
    if model.spec.is_upscaler:
        raise EngineError(f"{model.spec.label} checkpoints enlarge pictures: use them as an upscaler, not to generate")
    steps = steps or params.steps
    sampler, schedule, sigmas = sampler_and_sigmas(model, params, steps)
    prepared = prepare_prompt(params.prompt, params.negative_prompt, steps)
    size = (params.height, params.width)
    guided = build_guided_denoiser(
        model.make_denoiser(schedule, params.distilled_cfg_scale), conditioner, prepared, params.cfg_scale, size
    )
    if model.takes_image_conditioning and image_conditioning is None:
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
        x = schedule.noise_latent(init_latent, first, sigmas[0])
        if keep_mask is not None:
            guided.init_latent, guided.keep_mask = init_latent, keep_mask.to(init_latent)

    if refiner is not None and refiner.switch_at < 1:
        second = refiner.model

        def make_second():
            return build_guided_denoiser(
                second.make_denoiser(second.noise_schedule(params.height, params.width)),
                refiner.conditioner, prepared, params.cfg_scale, size,
            )

        guided = RefinerSwitch(guided, make_second, refiner.switch_at, schedule, refiner)

    def on_step(i, sigma, x, denoised):
        # Prompt editing counts sampler steps, not model calls; from 0 in img2img too, as A1111.
        guided.step = i + 1
        if callback:
            callback(i, sigma, x, denoised)

    with arranged_while_sampling(model, refiner.model if refiner is not None else None):
        out = sampler.sample(guided, x, sigmas, callback=on_step, noise=noise, **sampler_options(params))
    if keep_mask is not None:
        out = init_latent * keep_mask.to(init_latent) + out * (1 - keep_mask.to(init_latent))
    return out


@torch.no_grad()
def blank_inpainting_conditioning(model, n: int, height: int, width: int) -> torch.Tensor:
    """An inpainting checkpoint used for txt2img: "repaint everything" (mask of ones) over the
    latent of a mid-grey picture, as A1111 does."""
    grey = torch.zeros(1, 3, height, width, device=model.device)
    latent = encode_pixels(model.vae, grey)  # with the fp16-overflow retry
    mask = torch.ones_like(latent[:, :1])
    return torch.cat([mask, latent], dim=1).expand(n, -1, -1, -1)
