"""Batched generation of many different prompts at once, through the engine's own pieces
(TextConditioner, DiscreteDenoiser, the sampler registry and schedules, decode_latents), for
measuring the demo model: one picture per prompt, classifier-free guidance per picture."""
from __future__ import annotations

import torch

from core.conditioning import TextConditioner
from core.params import GenerationParams
from core.pipelines.common import decode_latents
from core.pipelines.sampling_run import sampler_and_sigmas
from core.sampling.denoiser import DiscreteDenoiser
from core.text.tokenizer import load_clip_tokenizer


@torch.no_grad()
def generate(model, prompts: list[str], *, cfg_scale: float = 7.0, steps: int = 20, seed: int = 0,
             sampler: str = "Euler", size: int = 64, batch: int = 50) -> torch.Tensor:
    """-> images in [0, 1], (len(prompts), 3, size, size)."""
    conditioner = TextConditioner(model.text_encoder, load_clip_tokenizer())
    params = GenerationParams(prompt="", width=size, height=size, steps=steps, cfg_scale=cfg_scale, sampler=sampler)
    sampler_obj, schedule, sigmas = sampler_and_sigmas(model, params, steps)
    denoiser = DiscreteDenoiser(model.unet, schedule, model.spec.prediction)
    factor = model.vae.config.downsample_factor
    generator = torch.Generator().manual_seed(seed)
    noise_all = torch.randn(len(prompts), model.vae.config.embed_dim, size // factor, size // factor, generator=generator)
    uncond_one = conditioner.encode("")
    out = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        cond = conditioner.encode_batch(chunk).to(sigmas.dtype)
        uncond = uncond_one[None].expand(len(chunk), -1, -1).to(sigmas.dtype)

        def guided(x, sigma, cond=cond, uncond=uncond):
            if cfg_scale == 1.0:
                return denoiser(x, sigma, cond)
            both = denoiser(torch.cat([x, x]), sigma, torch.cat([uncond, cond]))
            u, c = both.chunk(2)
            return u + cfg_scale * (c - u)

        noise = noise_all[start:start + batch].to(sigmas.dtype)
        x = sampler_obj.initial_latent(noise, sigmas)
        latents = sampler_obj.sample(guided, x, sigmas)
        out.append(decode_latents(model.vae, latents, tiled=False).float().cpu())
    return torch.cat(out)
