"""Text to image: a sampling run from pure noise (core/pipelines/sampling_run.py), then the VAE
decode. SDXL gets its size conditioning from the job's width and height."""
from __future__ import annotations

import torch

from core.conditioning import TextConditioner
from core.params import GenerationParams
from core.pipelines.common import decode_latents
from core.pipelines.sampling_run import Refiner, sample_latents


def txt2img(
    model, conditioner: TextConditioner, params: GenerationParams, seeds: list[int], callback=None, subseeds=None,
    refiner: Refiner | None = None,
) -> torch.Tensor:
    """-> images in [0, 1], (len(seeds), 3, height, width). With a refiner that took over, its
    own VAE decodes (as A1111, where the refiner is the loaded model by then)."""
    latents = sample_latents(model, conditioner, params, seeds, callback, subseeds, refiner=refiner)
    vae = refiner.model.vae if refiner is not None and refiner.used else model.vae
    return decode_latents(vae, latents)
