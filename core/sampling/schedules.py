"""Noise schedules: which sigmas a sampler visits. Kept apart from the samplers, which take any
decreasing sigma sequence ending in 0 (k-diffusion's convention)."""
from __future__ import annotations

import torch


class DiscreteSchedule:
    """The model's own 1000-step training schedule, seen as noise levels sigma = sqrt((1-a)/a).

    Fractional timesteps are interpolated in log-sigma, as A1111/k-diffusion do."""

    def __init__(self, alphas_cumprod: torch.Tensor):
        alphas_cumprod = alphas_cumprod.detach().float().cpu()
        self.alphas_cumprod = alphas_cumprod
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        # float64: near t=999 one float32 ulp of sigma moves t by 1e-4, which shows in the output.
        log_sigmas = self.log_sigmas.to(sigma.device, torch.float64)
        log_sigma = sigma.double().log()
        dists = log_sigma - log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=log_sigmas.shape[0] - 2)
        high = low + 1
        w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high])).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape).float()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        low, high = t.floor().long(), t.ceil().long()
        w = t - low
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]
        return log_sigma.exp()


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def automatic_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """A1111's default ("Automatic") for k-diffusion samplers: timesteps evenly spaced from the
    last to the first, then 0."""
    t = torch.linspace(len(schedule.sigmas) - 1, 0, steps)
    return append_zero(schedule.t_to_sigma(t))


def ddim_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """CompVis DDIM's "uniform" timesteps (1, 1 + 1000//n, ...), largest first, ending at the
    sigma of timestep 0 (DDIM's last step lands on alphas_cumprod[0], not on a clean image)."""
    total = len(schedule.sigmas)
    stride = total // steps
    timesteps = torch.arange(0, total, stride)[:steps] + 1
    timesteps = timesteps.clamp(max=total - 1).flip(0)
    return torch.cat([schedule.sigmas[timesteps], schedule.sigmas[:1]])
