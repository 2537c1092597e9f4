"""Flow-matching (rectified flow) models, SD3 and FLUX, for the samplers and schedules.

Such a model sees x_sigma = (1 - sigma) * x0 + sigma * noise with sigma in [0, 1] and predicts the
velocity v = noise - x0, so its clean estimate is x - sigma * v. With that estimate the k-diffusion
ODE solvers in sigma (Euler, Heun, DPM2, LMS, DPM++ 2M) work unchanged: Euler's step
x' = (s'/s) x + (1 - s'/s) denoised is exact for a constant estimate in both kinds of noising.
Ancestral samplers need the rectified-flow noise step (``samplers.get_ancestral_step_flow``); the
others (SDE, Restart, DDIM-type, LCM) assume variance-exploding noise and are refused.

The schedule (ComfyUI's ModelSamplingDiscreteFlow idea): 1000 timesteps t = i/1000, i = 1..1000,
and sigma(t) = shift * t / (1 + (shift - 1) * t). SD3 uses a fixed shift (3.0). FLUX dev shifts by
resolution as diffusers' FluxPipeline does: mu is linear in the packed token count
(h/16) * (w/16), from 0.5 at 256 tokens to 1.15 at 4096, and its scheduler maps
t -> exp(mu) / (exp(mu) + (1/t - 1)). Multiplying through by t shows this is the same formula
with shift = exp(mu), so one FlowSchedule serves both (``flux_shift``). FLUX schnell: no shift.

Schedule types on a flow model ("Automatic" is "Simple", Forge's default for FLUX):

* "Simple": t = 1, 1 - 1/n, ..., 1/n, shifted, then 0. That is the grid FluxPipeline hands its
  scheduler (np.linspace(1, 1/n, n)) and what Forge/ComfyUI's "simple" picks from the table
  (they truncate k * 1000/n to a whole timestep; we keep it exact).
* "Normal" / "SGM Uniform": ComfyUI's, whose timestep for a flow model is sigma itself (times
  1000 for SD3): t evenly spaced from sigma_max to sigma_min *of the shifted table*, then shifted
  (SGM Uniform over n + 1 points, the last dropped). "Normal" therefore equals diffusers'
  FlowMatchEulerDiscreteScheduler.set_timesteps(n) with a fixed shift, the SD3 pipeline's default.
* "Uniform": the generic one, table index evenly spaced: sigma(linspace(1, 0.001, n)), which is
  diffusers' set_timesteps(n, mu=...) with dynamic shifting when no sigmas are handed to it.
* Karras, Exponential, Polyexponential, Beta: between the table's sigma_min (sigma(0.001)) and
  sigma_max (1); "DDIM": the table's entries at its timesteps. "Align Your Steps" has tables for
  SD 1.x/SDXL sigmas only, and is refused.

``t`` in ``sigma_to_t``/``t_to_sigma`` is the table index (0..999, fractional between), as in
DiscreteSchedule, so the generic schedule functions work; the network's own timestep input is
``network_timestep`` (sigma * 1000 for SD3's MMDiT, sigma for FLUX).
"""
from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

import torch

from core.errors import EngineError
from core.sampling.samplers import SAMPLERS, Sampler, get_sampler
from core.sampling.schedules import append_zero, compute_sigmas

TIMESTEPS = 1000
SD3_SHIFT = 3.0
FLUX_BASE_SHIFT, FLUX_MAX_SHIFT = 0.5, 1.15  # mu at the two token counts below
FLUX_BASE_TOKENS, FLUX_MAX_TOKENS = 256, 4096
FLOW_AUTOMATIC = "Simple"


def flux_mu(height: int, width: int) -> float:
    """diffusers' calculate_shift for a picture of height x width pixels: the VAE's 8x, then 2x2
    patches, make (h/16) * (w/16) image tokens."""
    tokens = (height // 16) * (width // 16)
    slope = (FLUX_MAX_SHIFT - FLUX_BASE_SHIFT) / (FLUX_MAX_TOKENS - FLUX_BASE_TOKENS)
    return tokens * slope + FLUX_BASE_SHIFT - slope * FLUX_BASE_TOKENS


def flux_shift(height: int, width: int) -> float:
    """FLUX dev's resolution-dependent shift, exp(mu): 1.65 at 256 tokens (256x256), 3.16 at 4096
    (1024x1024), extrapolated linearly in mu beyond."""
    return math.exp(flux_mu(height, width))


def shift_sigma(t, shift: float):
    """sigma(t) = shift * t / (1 + (shift - 1) * t), elementwise on floats, arrays or tensors."""
    return shift * t / (1 + (shift - 1) * t)


def unshift_sigma(sigma, shift: float):
    """The inverse of ``shift_sigma``: t = sigma / (shift - (shift - 1) * sigma)."""
    return sigma / (shift - (shift - 1) * sigma)


def _shifted(schedule: "FlowSchedule", t: torch.Tensor) -> torch.Tensor:
    """sigma(t) in float64 for t in (0, 1], then float32 as every schedule's sigmas."""
    return append_zero(shift_sigma(t.double(), schedule.shift).float())


def flow_simple_sigmas(schedule: "FlowSchedule", steps: int) -> torch.Tensor:
    """t = 1 - k/steps for k = 0..steps-1 (FluxPipeline's grid), shifted, then 0."""
    return _shifted(schedule, 1 - torch.arange(steps, dtype=torch.float64) / steps)


def _comfy_timesteps(schedule: "FlowSchedule", points: int) -> torch.Tensor:
    """ComfyUI's flow timesteps: evenly spaced from sigma_max to sigma_min, each then read as an
    unshifted t (so the low end is shifted twice, as in ComfyUI and diffusers)."""
    return torch.linspace(schedule.sigma_max, schedule.sigma_min, points, dtype=torch.float64)


def flow_normal_sigmas(schedule: "FlowSchedule", steps: int) -> torch.Tensor:
    return _shifted(schedule, _comfy_timesteps(schedule, steps))


def flow_sgm_uniform_sigmas(schedule: "FlowSchedule", steps: int) -> torch.Tensor:
    return _shifted(schedule, _comfy_timesteps(schedule, steps + 1)[:-1])


def refuse_align_your_steps(schedule: "FlowSchedule", steps: int) -> torch.Tensor:
    raise EngineError("Align Your Steps has tables for SD 1.x and SDXL noise levels only, not for flow-matching "
                      "models (SD3, FLUX): choose Simple, Normal, Beta or another type", "scheduler",
                      label="schedule type")


class FlowSchedule:
    """A flow-matching model's 1000-step table, duck-compatible with DiscreteSchedule: ``sigmas``
    (increasing, sigmas[i] = sigma((i + 1) / 1000)), ``log_sigmas``, ``sigma_min``, ``sigma_max``,
    ``sigma_to_t``/``t_to_sigma`` in table indices (exact, not interpolated), and the noising."""

    schedule_overrides = {
        "Simple": flow_simple_sigmas,
        "Normal": flow_normal_sigmas,
        "SGM Uniform": flow_sgm_uniform_sigmas,
        "Align Your Steps": refuse_align_your_steps,
    }

    def __init__(self, shift: float = 1.0, timestep_scale: float = 1.0):
        if not shift > 0:
            raise ValueError(f"a flow schedule's shift must be positive, got {shift!r}")
        self.shift = float(shift)
        # The network's timestep input per unit of sigma: 1000 for SD3's MMDiT, 1 for FLUX.
        self.timestep_scale = float(timestep_scale)
        t = torch.arange(1, TIMESTEPS + 1, dtype=torch.float64) / TIMESTEPS
        self.sigmas = shift_sigma(t, self.shift).float()
        self.log_sigmas = self.sigmas.log()
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])

    @classmethod
    def sd3(cls, shift: float = SD3_SHIFT) -> "FlowSchedule":
        return cls(shift, timestep_scale=TIMESTEPS)

    @classmethod
    def flux(cls, height: int, width: int, dynamic_shift: bool = True) -> "FlowSchedule":
        """FLUX dev (``dynamic_shift``: shifted for the picture's size) or schnell (unshifted)."""
        return cls(flux_shift(height, width) if dynamic_shift else 1.0, timestep_scale=1.0)

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional table index of sigma, clamped to the table as DiscreteSchedule's."""
        t = unshift_sigma(sigma.double(), self.shift) * TIMESTEPS - 1
        return t.clamp(0, TIMESTEPS - 1).float()

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        return shift_sigma((t.double() + 1) / TIMESTEPS, self.shift).float()

    def network_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """What the network takes as its timestep: sigma * 1000 (SD3), sigma itself (FLUX)."""
        return sigma * self.timestep_scale

    @staticmethod
    def noise_latent(latent: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
        """Flow noising: x = (1 - sigma) * x0 + sigma * noise (img2img's starting latent)."""
        return latent * (1 - sigma) + noise * sigma

    @staticmethod
    def initial_latent(noise: torch.Tensor, sigma) -> torch.Tensor:
        """Pure noise at sigma: the blend above from a zero latent (at sigma_max = 1: the noise)."""
        return noise * sigma


class FlowDenoiser:
    """A velocity-predicting network seen as k-diffusion's denoiser: model(x, sigma, ...) =
    x - sigma * v with v = network(x, timestep(sigma), ...). The sampler's arithmetic stays in x's
    dtype (float32) around a network that may run in bf16 and answer in it."""

    def __init__(self, network_call, schedule: FlowSchedule):
        self.network = network_call
        self.schedule = schedule

    def __call__(self, x: torch.Tensor, sigma, *args, **kwargs) -> torch.Tensor:
        sigma = torch.as_tensor(sigma).reshape(-1).to(x.device, x.dtype).expand(x.shape[0])
        velocity = self.network(x, self.schedule.network_timestep(sigma), *args, **kwargs).to(x.dtype)
        return x - velocity * sigma.reshape(-1, *[1] * (x.dim() - 1))


FLOW_SAMPLERS = tuple(name for name, sampler in SAMPLERS.items() if sampler.flow_ok)


def flow_sampler(sampler: Sampler | str) -> Sampler:
    """The sampler as it runs on a flow-matching model: ancestral ones take the rectified-flow
    noise step, and "Automatic" means Simple. Samplers built for variance-exploding noise (SDE,
    Restart, DDIM, PLMS, UniPC, LCM) are refused with an EngineError naming them."""
    if isinstance(sampler, str):
        sampler = get_sampler(sampler)
    if not sampler.flow_ok:
        raise EngineError(f"{sampler.name} is not for flow-matching models (SD3, FLUX); use one of: "
                          f"{', '.join(FLOW_SAMPLERS)}", "sampler")
    defaults = dict(sampler.defaults)
    if "flow" in sampler.options:
        defaults["flow"] = True
    automatic = partial(compute_sigmas, FLOW_AUTOMATIC, discard_penultimate=sampler.discard_penultimate_sigma)
    return replace(sampler, sigmas=automatic, default_schedule=FLOW_AUTOMATIC, defaults=defaults)
