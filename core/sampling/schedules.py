"""Noise schedules: which sigmas a sampler visits. Kept apart from the samplers, which take any
decreasing sigma sequence ending in 0 (k-diffusion's convention; DDIM-type samplers' own
discretisations end at the sigma of timestep 0 instead).

Schedule types are A1111's "Schedule type" (infotext names): every function here is
``(DiscreteSchedule, steps) -> sigmas`` and returns ``steps + 1`` float32 values on the CPU, the
last one 0. A1111 details kept on purpose:

* Karras / Exponential / Polyexponential / Beta run between the model's own smallest and largest
  sigma (``sigma_min``/``sigma_max`` of the 1000-step table), then append 0.
* "DDIM" is A1111's ``ddim_scheduler``: the sigmas of timesteps 1, 1 + 1000//n, ... below 1000,
  then 0. It starts below sigma_max (timestep 951 for 20 steps) and, when ``steps`` does not
  divide 1000, has more than ``steps`` steps (7 steps -> 8), exactly as in A1111.
* "Align Your Steps" uses NVIDIA's published 10-step tables (11 sigmas). Like A1111 it uses a
  table as-is only when ``steps == 11`` and otherwise log-linearly resamples the 11 values to
  ``steps`` values (so 10 steps is a resampled table), then appends 0.
* "Beta" is A1111's: sigma_min + ppf(1 - i/(n-1); 0.6, 0.6) * (sigma_max - sigma_min), linear in
  sigma (not in timesteps as in other UIs).

"Automatic" is the sampler's own default (``Sampler.sigmas``): Uniform for Euler/Euler a/Heun/LMS,
Karras for DPM2/DPM2 a/DPM++ 2S a/DPM++ 2M/DPM++ SDE/Restart, Exponential for DPM++ 2M SDE and
DPM++ 3M SDE, and the discrete timesteps of DDIM, PLMS, UniPC and LCM. Samplers that A1111 marks
"discard_next_to_last_sigma" (DPM2, DPM2 a, DPM++ 3M SDE) get ``steps + 1`` sigmas with the
penultimate one dropped, whatever the schedule type.
"""
from __future__ import annotations

import math
from functools import partial

import numpy as np
import torch

from core.errors import NOT_FOUND, EngineError


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

    # How a latent is noised to sigma, asked per schedule kind (flow-matching models blend instead).
    @staticmethod
    def noise_latent(latent: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
        """Variance-exploding noising: x = x0 + sigma * noise (img2img's starting latent)."""
        return latent + noise * sigma

    @staticmethod
    def initial_latent(noise: torch.Tensor, sigma) -> torch.Tensor:
        """A pure-noise latent at sigma (txt2img)."""
        return noise * sigma


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _from_list(values) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32)


# --- schedule types ("Schedule type" in A1111's infotext) -----------------------------------


def automatic_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """A1111's default ("Automatic") for k-diffusion samplers, also its "Uniform": timesteps evenly
    spaced from the last to the first, then 0."""
    t = torch.linspace(len(schedule.sigmas) - 1, 0, steps)
    return append_zero(schedule.t_to_sigma(t))


uniform_sigmas = automatic_sigmas


def karras_sequence(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022): n sigmas evenly spaced in sigma^(1/rho), largest first (float64)."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def karras_sigmas(schedule: DiscreteSchedule, steps: int, rho: float = 7.0) -> torch.Tensor:
    return append_zero(karras_sequence(steps, schedule.sigma_min, schedule.sigma_max, rho).float())


def exponential_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    log_sigmas = torch.linspace(math.log(schedule.sigma_max), math.log(schedule.sigma_min), steps, dtype=torch.float64)
    return append_zero(log_sigmas.exp().float())


def polyexponential_sigmas(schedule: DiscreteSchedule, steps: int, rho: float = 1.0) -> torch.Tensor:
    """A polynomial in log sigma; rho 1 (A1111's default) equals Exponential."""
    ramp = torch.linspace(1, 0, steps, dtype=torch.float64) ** rho
    lo, hi = math.log(schedule.sigma_min), math.log(schedule.sigma_max)
    return append_zero((ramp * (hi - lo) + lo).exp().float())


def _t_of(schedule: DiscreteSchedule, sigma: float) -> float:
    return float(schedule.sigma_to_t(torch.tensor([sigma], dtype=torch.float64))[0])


def sgm_uniform_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Timesteps evenly spaced over steps + 1 points from sigma_max to sigma_min, the last dropped."""
    start, end = _t_of(schedule, schedule.sigma_max), _t_of(schedule, schedule.sigma_min)
    t = torch.linspace(start, end, steps + 1)[:-1]
    return append_zero(schedule.t_to_sigma(t))


def normal_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Timesteps evenly spaced from sigma_max's to sigma_min's (the same sigmas as Uniform)."""
    start, end = _t_of(schedule, schedule.sigma_max), _t_of(schedule, schedule.sigma_min)
    t = torch.linspace(start, end, steps)
    return append_zero(schedule.t_to_sigma(t))


def simple_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """Every (1000/steps)-th training sigma, from the largest."""
    total = len(schedule.sigmas)
    stride = total / steps
    return append_zero(_from_list(schedule.sigmas[-(1 + int(i * stride))] for i in range(steps)))


def ddim_uniform_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """A1111's "DDIM" schedule type: training sigmas at timesteps 1, 1 + 1000//steps, ... (< 1000),
    largest first, then 0."""
    total = len(schedule.sigmas)
    stride = max(total // steps, 1)
    return append_zero(_from_list(schedule.sigmas[t] for t in reversed(range(1, total, stride))))


def _beta_cdf(x: np.ndarray, a: float, b: float) -> np.ndarray:
    """Regularized incomplete beta I_x(a, b), by its continued fraction (modified Lentz), using
    I_x(a, b) = 1 - I_(1-x)(b, a) where the fraction converges slowly."""
    x = np.asarray(x, dtype=np.float64)
    flip = x > (a + 1) / (a + b + 2)
    xs = np.where(flip, 1 - x, x)
    aa, bb = np.where(flip, b, a), np.where(flip, a, b)
    tiny = 1e-300
    with np.errstate(divide="ignore"):
        log_front = aa * np.log(xs) + bb * np.log1p(-xs) - (math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
    c = np.ones_like(xs)
    d = 1 - (aa + bb) * xs / (aa + 1)
    d = 1 / np.where(np.abs(d) < tiny, tiny, d)
    f = d.copy()
    for m in range(1, 300):
        for numerator in (
            m * (bb - m) * xs / ((aa + 2 * m - 1) * (aa + 2 * m)),
            -(aa + m) * (aa + bb + m) * xs / ((aa + 2 * m) * (aa + 2 * m + 1)),
        ):
            d = 1 + numerator * d
            d = 1 / np.where(np.abs(d) < tiny, tiny, d)
            c = 1 + numerator / c
            c = np.where(np.abs(c) < tiny, tiny, c)
            f = f * c * d
        if np.all(np.abs(c * d - 1) < 1e-15):
            break
    value = np.exp(log_front) * f / aa
    value = np.where(xs <= 0, 0.0, value)
    return np.where(flip, 1 - value, value)


def beta_ppf(q, a: float, b: float) -> np.ndarray:
    """Quantiles of the Beta(a, b) distribution (scipy.stats.beta.ppf without scipy), by bisection
    on the CDF to float64 resolution."""
    q = np.asarray(q, dtype=np.float64)
    lo, hi = np.zeros_like(q), np.ones_like(q)
    for _ in range(60):
        mid = (lo + hi) / 2
        below = _beta_cdf(mid, a, b) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return np.where(q <= 0, 0.0, np.where(q >= 1, 1.0, (lo + hi) / 2))


def beta_sigmas(schedule: DiscreteSchedule, steps: int, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """"Beta Sampling is All You Need" (Lee et al. 2024) as A1111 implements it."""
    quantiles = beta_ppf(1 - np.linspace(0, 1, steps), alpha, beta)
    lo, hi = schedule.sigma_min, schedule.sigma_max
    return append_zero(_from_list(lo + q * (hi - lo) for q in quantiles))


# NVIDIA's published 10-step Align Your Steps sigmas (11 values, the last being sigma_min).
AYS_SD1 = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def align_your_steps_sigmas(schedule: DiscreteSchedule, steps: int, family: str = "sd1") -> torch.Tensor:
    """The table of the model's family (core/models/families.py): SDXL's for SDXL models, the
    SD 1.5 table for the others (as A1111)."""
    from core.models.families import family_of  # the registry reads the tables above

    table = family_of(family or "sd1").align_your_steps
    if steps == len(table):
        return append_zero(_from_list(table))
    # Log-linear resampling of the decreasing table onto `steps` evenly spaced points.
    xs = np.linspace(0, 1, len(table))
    ys = np.log(np.array(table[::-1]))
    resampled = np.exp(np.interp(np.linspace(0, 1, steps), xs, ys))[::-1]
    return append_zero(_from_list(resampled))


# --- samplers' own discretisations ("Automatic" for DDIM, PLMS, UniPC, LCM) ------------------


def ddim_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """CompVis DDIM's "uniform" timesteps (1, 1 + 1000//n, ...), largest first, ending at the
    sigma of timestep 0 (DDIM's last step lands on alphas_cumprod[0], not on a clean image).
    Also PLMS's timesteps."""
    total = len(schedule.sigmas)
    stride = total // steps
    timesteps = torch.arange(0, total, stride)[:steps] + 1
    timesteps = timesteps.clamp(max=total - 1).flip(0)
    return torch.cat([schedule.sigmas[timesteps], schedule.sigmas[:1]])


def unipc_sigmas(schedule: DiscreteSchedule, steps: int) -> torch.Tensor:
    """UniPC's "time_uniform" discretisation (A1111's default): steps + 1 timesteps evenly spaced
    from 999 to 0, ending at the sigma of timestep 0. (A1111 interpolates fractional timesteps in
    log-alpha, we in log-sigma, as everywhere else in the engine; at whole timesteps they agree.)"""
    t = torch.linspace(len(schedule.sigmas) - 1, 0, steps + 1)
    return schedule.t_to_sigma(t)


def lcm_timesteps(steps: int, total: int = 1000, original_steps: int = 50) -> list[int]:
    """LCM's timesteps: A1111 spaces the sampling evenly over the distillation grid
    (timesteps 19, 39, ..., 999 for 50 original steps) and runs the model at the nearest grid
    timestep; we take those grid timesteps (ties go to the smaller timestep, as A1111's argmin)."""
    skip = total // original_steps
    index = torch.linspace(original_steps - 1, 0, steps, dtype=torch.float64)
    snapped = torch.ceil(index - 0.5).long().clamp(0, original_steps - 1)
    return [int(i) * skip + skip - 1 for i in snapped]


def lcm_sigmas(schedule: DiscreteSchedule, steps: int, original_steps: int = 50) -> torch.Tensor:
    """The training sigmas of ``lcm_timesteps``, then 0. Beyond ``original_steps`` steps the grid
    has too few points, so (as A1111) the grid is interpolated in log-sigma instead."""
    total = len(schedule.sigmas)
    if steps <= original_steps:
        return append_zero(schedule.sigmas[lcm_timesteps(steps, total, original_steps)].clone())
    skip = total // original_steps
    grid = schedule.log_sigmas[torch.arange(original_steps) * skip + skip - 1].double()
    index = torch.linspace(original_steps - 1, 0, steps, dtype=torch.float64)
    low = index.floor().long().clamp(max=original_steps - 2)
    w = index - low
    return append_zero(((1 - w) * grid[low] + w * grid[low + 1]).exp().float())


# --- registry -----------------------------------------------------------------------------

AUTOMATIC = "Automatic"

SCHEDULES = {
    "Uniform": uniform_sigmas,
    "Karras": karras_sigmas,
    "Exponential": exponential_sigmas,
    "Polyexponential": polyexponential_sigmas,
    "SGM Uniform": sgm_uniform_sigmas,
    "Simple": simple_sigmas,
    "Normal": normal_sigmas,
    "DDIM": ddim_uniform_sigmas,
    "Beta": beta_sigmas,
    "Align Your Steps": align_your_steps_sigmas,
}

# Lower-cased spellings A1111 accepts (its internal names and aliases) -> label.
SCHEDULE_SPELLINGS = {
    **{label.lower(): label for label in (AUTOMATIC, *SCHEDULES)},
    "sgm_uniform": "SGM Uniform",
    "sgmuniform": "SGM Uniform",
    "align_your_steps": "Align Your Steps",
}


def resolve_schedule_name(name: str | None) -> str:
    """A schedule type's label from any of A1111's spellings ('' and None mean Automatic)."""
    if name is None or not str(name).strip():
        return AUTOMATIC
    label = SCHEDULE_SPELLINGS.get(" ".join(str(name).split()).lower())
    if label is None:
        raise EngineError(f"unknown {name!r} (known: {', '.join([AUTOMATIC, *SCHEDULES])})", "scheduler", NOT_FOUND,
                          label="schedule type")
    return label


def compute_sigmas(
    label: str, schedule: DiscreteSchedule, steps: int, *, discard_penultimate: bool = False, family: str = "sd1"
) -> torch.Tensor:
    """One schedule type's sigmas; with ``discard_penultimate`` one more step is computed and the
    next-to-last sigma dropped (A1111's discard_next_to_last_sigma)."""
    # A schedule kind may compute some types its own way (FlowSchedule: Simple, Normal, SGM Uniform).
    function = getattr(schedule, "schedule_overrides", {}).get(label, SCHEDULES[label])
    if function is align_your_steps_sigmas:
        function = partial(function, family=family)
    sigmas = function(schedule, steps + 1 if discard_penultimate else steps)
    if discard_penultimate:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas


def get_sigmas(schedule_name: str | None, sampler, discrete_schedule: DiscreteSchedule, steps: int, family: str = "sd1") -> torch.Tensor:
    """The sigmas a sampler (a ``Sampler`` or its name) visits for a schedule type.
    "Automatic" is the sampler's own default."""
    if isinstance(sampler, str):
        from core.sampling.samplers import get_sampler

        sampler = get_sampler(sampler)
    label = resolve_schedule_name(schedule_name)
    if label == AUTOMATIC:
        return sampler.sigmas(discrete_schedule, steps)
    return compute_sigmas(
        label, discrete_schedule, steps, discard_penultimate=sampler.discard_penultimate_sigma, family=family
    )
