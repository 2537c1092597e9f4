"""Samplers: short pure functions over a denoiser ``model(x, sigma)`` and a sigma sequence.

Each returns the final latent. ``callback(step, sigma, x, denoised)`` runs after every step (for
progress and previews) and may raise to stop. Noise for stochastic samplers comes from an
injected ``noise(like)`` source so that seeds reproduce across devices.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from core.sampling import schedules

Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None] | None


def to_d(x, sigma, denoised):
    """The ODE's derivative dx/dsigma."""
    return (x - denoised) / sigma


@torch.no_grad()
def sample_euler(model, x, sigmas, callback: Callback = None):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i])
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        if callback:
            callback(i, float(sigmas[i]), x, denoised)
    return x


@torch.no_grad()
def sample_ddim(model, x, sigmas, callback: Callback = None):
    """Deterministic DDIM (eta 0) is an Euler step in sigma space between the model's discrete
    timesteps. It ends at timestep 0's small sigma rather than 0, and returns the latent in the
    model's own scaling, as CompVis DDIM does."""
    x = sample_euler(model, x, sigmas, callback)
    return x / (1 + sigmas[-1] ** 2) ** 0.5


@dataclass(frozen=True)
class Sampler:
    name: str
    function: Callable
    sigmas: Callable  # (DiscreteSchedule, steps) -> sigmas
    # Whether the first latent is DDPM-scaled noise (x_T ~ N(0, 1 + sigma^2)) rather than sigma * noise.
    ddpm_initial_noise: bool = False

    def initial_latent(self, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        scale = (1 + sigmas[0] ** 2) ** 0.5 if self.ddpm_initial_noise else sigmas[0]
        return noise * scale


SAMPLERS = {
    s.name: s
    for s in (
        Sampler("Euler", sample_euler, schedules.automatic_sigmas),
        Sampler("DDIM", sample_ddim, schedules.ddim_sigmas, ddpm_initial_noise=True),
    )
}
