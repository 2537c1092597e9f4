"""Wrappers that turn the UNet into k-diffusion's denoiser ``model(x, sigma) -> clean estimate``."""
from __future__ import annotations

import torch

from core.sampling.schedules import DiscreteSchedule


class DiscreteDenoiser:
    """An eps- or v-prediction UNet trained on discrete timesteps, seen as a denoiser of
    variance-exploding inputs x = x0 + sigma * noise."""

    def __init__(self, unet, schedule: DiscreteSchedule, prediction: str = "eps"):
        self.unet = unet
        self.schedule = schedule
        self.prediction = prediction

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, **unet_kwargs) -> torch.Tensor:
        sigma = sigma.reshape(-1).to(x.device, x.dtype).expand(x.shape[0])
        s = sigma[:, None, None, None]
        c_in = 1 / (s**2 + 1) ** 0.5
        t = self.schedule.sigma_to_t(sigma)
        out = self.unet(x * c_in, t, context, **unet_kwargs).to(x.dtype)
        if self.prediction == "v":
            return x * (1 / (s**2 + 1)) - out * s * c_in
        return x - out * s


class CFGDenoiser:
    """Classifier-free guidance: one batched call for conditional and unconditional halves."""

    def __init__(self, denoiser: DiscreteDenoiser, cond: torch.Tensor, uncond: torch.Tensor, cfg_scale: float):
        self.denoiser = denoiser
        self.cond = cond
        self.uncond = uncond
        self.cfg_scale = cfg_scale

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.cfg_scale == 1.0:
            return self.denoiser(x, sigma, self.cond)
        both = self.denoiser(torch.cat([x, x]), sigma, torch.cat([self.uncond, self.cond]))
        uncond, cond = both.chunk(2)
        return uncond + (cond - uncond) * self.cfg_scale
