"""Hires fix: a first pass at the base size, an upscale, then an img2img pass at the large size.

The upscale is either of the latent (A1111's "Latent" modes, no decode needed) or of the
decoded picture by a resampler or upscaler model, re-encoded for the second pass.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from core.errors import UNAVAILABLE, EngineError
from core.params import GenerationParams
from core.pipelines.common import decode_latents, to_pil
from core.pipelines.sampling_run import sample_latents

# A1111's latent upscale modes: name -> (interpolation, antialias)
LATENT_UPSCALE_MODES = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def hires_size(params: GenerationParams) -> tuple[int, int]:
    """The second pass's size: hr_resize_x/y when given (one of them keeps the aspect ratio),
    else the base size times hr_scale, rounded down to a multiple of 8."""
    x, y = params.hr_resize_x, params.hr_resize_y
    if x and y:
        return x, y
    if x:
        return x, max(8, round(params.height * x / params.width) // 8 * 8)
    if y:
        return max(8, round(params.width * y / params.height) // 8 * 8), y
    return max(8, int(params.width * params.hr_scale) // 8 * 8), max(8, int(params.height * params.hr_scale) // 8 * 8)


def second_pass_params(params: GenerationParams) -> GenerationParams:
    width, height = hires_size(params)
    return dataclasses.replace(
        params, width=width, height=height, enable_hr=False,
        steps=params.hr_second_pass_steps or params.steps,
        sampler=params.hr_sampler_name or params.sampler,
        scheduler=params.hr_scheduler or params.scheduler,
        prompt=params.hr_prompt or params.prompt,
        negative_prompt=params.hr_negative_prompt or params.negative_prompt,
        seed_resize_from_w=0, seed_resize_from_h=0,
    )


@torch.no_grad()
def upscale_latents(model, latents: torch.Tensor, params: GenerationParams, size: tuple[int, int], upscale_pixels) -> torch.Tensor:
    factor = model.vae.config.downsample_factor
    width, height = size
    if params.hr_upscaler in LATENT_UPSCALE_MODES:
        mode, antialias = LATENT_UPSCALE_MODES[params.hr_upscaler]
        return F.interpolate(latents, size=(height // factor, width // factor), mode=mode, antialias=antialias)
    if upscale_pixels is None:
        raise EngineError(f"{params.hr_upscaler!r} needs a pixel upscaler, none is available", "hr_upscaler", UNAVAILABLE)
    from core.pipelines.img2img import encode, to_tensor

    pictures = to_pil(decode_latents(model.vae, latents))
    large = [upscale_pixels(picture, params.hr_upscaler, (width, height)) for picture in pictures]
    return torch.cat([encode(model, to_tensor(picture)) for picture in large])


def hires_fix(model, conditioner, params: GenerationParams, seeds, callback=None, subseeds=None, upscale_pixels=None,
              refiner=None):
    """``refiner`` (core.pipelines.sampling_run.Refiner) takes part in the second pass only, as in
    A1111 with its default ``hires_fix_refiner_pass`` ("second pass"): it takes over at
    ``switch_at`` of that pass's noise levels, and its VAE decodes the result if it did."""
    first = sample_latents(model, conditioner, params, seeds, callback, subseeds)
    second = second_pass_params(params)
    large = upscale_latents(model, first, params, (second.width, second.height), upscale_pixels)
    latents = sample_latents(
        model, conditioner, second, seeds, callback, subseeds, init_latent=large, denoising_strength=params.denoising_strength,
        refiner=refiner,
    )
    vae = refiner.model.vae if refiner is not None and refiner.used else model.vae
    return to_pil(decode_latents(vae, latents))


def hires_fields(params: GenerationParams) -> dict:
    """Infotext fields as A1111 writes them for a hires-fix image."""
    if not params.enable_hr:
        return {}
    fields: dict = {"Denoising strength": params.denoising_strength}
    if params.hr_resize_x or params.hr_resize_y:
        fields["Hires resize"] = "{}x{}".format(*hires_size(params))
    else:
        fields["Hires upscale"] = params.hr_scale
    if params.hr_second_pass_steps:
        fields["Hires steps"] = params.hr_second_pass_steps
    fields["Hires upscaler"] = params.hr_upscaler
    if params.hr_sampler_name:
        fields["Hires sampler"] = params.hr_sampler_name
    if params.hr_scheduler:
        fields["Hires schedule type"] = params.hr_scheduler
    if params.hr_prompt:
        fields["Hires prompt"] = params.hr_prompt
    if params.hr_negative_prompt:
        fields["Hires negative prompt"] = params.hr_negative_prompt
    return fields
