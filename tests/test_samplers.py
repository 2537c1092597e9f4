"""Samplers, schedules, sampler names and per-image noise.

Parity: each sampler against the diffusers scheduler that implements the same algorithm, both
driven by one small deterministic eps-prediction "UNet" (a function of (x, t) built from fixed
random tensors) in float64, from the same starting latent and, for stochastic samplers, the same
noise (two generators with one seed: diffusers draws through its ``generator`` argument, ours
through the injected ``noise`` source, in the same order). Where A1111's sigma spacing differs
from a diffusers scheduler's default, the oracle is handed the same timesteps (custom
``timesteps``/``sigmas``, a spacing/step count at which both land on the same whole timesteps, or
the matching config); each case says which.

Convergence: data ~ N(mu, s^2) per dimension has the closed-form denoiser
D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), whose probability-flow ODE is solved exactly
by x(sigma) = mu + (x_T - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_max^2).
"""
import inspect
import math

import numpy as np
import pytest
import torch

from core.errors import EngineError
from core.sampling import samplers as S
from core.sampling import schedules as sched
from core.sampling.denoiser import DiscreteDenoiser
from core.sampling.noise import ImageNoise, slerp
from core.sampling.schedules import DiscreteSchedule, get_sigmas

BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
TOLERANCE = 1e-4  # max abs error of the final latent against diffusers


def sd_schedule() -> DiscreteSchedule:
    """SD's scaled-linear betas (0.00085 .. 0.012), as the original code computes them."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return DiscreteSchedule(torch.cumprod(1 - betas, dim=0).float())


SCHEDULE = sd_schedule()


class ToyUNet:
    """A stand-in eps-prediction UNet: smooth in x and t, mixing channels and neighbours. Its
    output is of the order of its input, like a real one."""

    def __init__(self, channels: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.randn(channels, channels, generator=g, dtype=torch.float64) / channels**0.5
        self.bias = torch.randn(1, channels, 1, 1, generator=g, dtype=torch.float64)
        self.calls = 0

    def __call__(self, x, t, context=None):
        self.calls += 1
        t = torch.as_tensor(t).to(x.dtype).reshape(-1, 1, 1, 1)
        mixed = torch.einsum("oc,bchw->bohw", self.mix, x) + 0.5 * torch.roll(x, 1, dims=-1)
        return 0.9 * x + 0.3 * torch.tanh(mixed + self.bias * torch.cos(t / 400)) + 0.05 * torch.sin(t / 150)


# --- parity with diffusers ----------------------------------------------------------------


def _diffusers_schedule() -> DiscreteSchedule:
    from diffusers import DDPMScheduler

    return DiscreteSchedule(DDPMScheduler(**BETAS).alphas_cumprod)


def _our_model(unet, schedule):
    denoiser = DiscreteDenoiser(unet, schedule)
    return lambda x, sigma: denoiser(x, sigma, None)


def _run_diffusers(scheduler, unet, latents, set_kwargs, generator=None, step_kwargs=None, model_t=None):
    """Diffusers' own loop: scale the input, call the UNet at the scheduler's timestep, step."""
    scheduler.set_timesteps(**set_kwargs)
    accepts_generator = "generator" in inspect.signature(scheduler.step).parameters
    x = latents
    for i, t in enumerate(scheduler.timesteps):
        eps = unet(scheduler.scale_model_input(x, t), t if model_t is None else model_t(scheduler, i))
        extra = dict(step_kwargs or {})
        if accepts_generator:
            extra["generator"] = generator
        x = scheduler.step(eps, t, x, **extra).prev_sample
    return x


def _fractional_t(scheduler, i):
    """DPMSolverMultistepScheduler keeps its timesteps as whole numbers (Karras ones rounded, others
    truncated) and calls the UNet there; A1111 calls it at the fractional timestep of the sigma.
    Hand the UNet diffusers' own unrounded _sigma_to_t of the step's sigma."""
    acp = scheduler.alphas_cumprod.numpy()
    log_sigmas = np.log(((1 - acp) / acp) ** 0.5)
    return torch.tensor(float(scheduler._sigma_to_t(np.array(float(scheduler.sigmas[i])), log_sigmas)))


def _uniform_timesteps(steps):
    return [round(999 - k * 999 / (steps - 1)) for k in range(steps)]


def _case_euler(schedule):
    from diffusers import EulerDiscreteScheduler

    # A1111 interpolates fractional timesteps in log-sigma, diffusers linearly: hand it our sigmas.
    sigmas = sched.automatic_sigmas(schedule, 12)
    return "Euler", sigmas, {}, EulerDiscreteScheduler(**BETAS, timestep_spacing="linspace"), {"sigmas": sigmas.tolist()}, {}


def _case_euler_a(schedule):
    from diffusers import EulerAncestralDiscreteScheduler

    # 10 steps: linspace(0, 999, 10) are whole timesteps, where both interpolations agree.
    return "Euler a", None, {}, EulerAncestralDiscreteScheduler(**BETAS, timestep_spacing="linspace"), {"num_inference_steps": 10}, {}


def _case_heun(schedule):
    from diffusers import HeunDiscreteScheduler

    return "Heun", None, {}, HeunDiscreteScheduler(**BETAS, timestep_spacing="linspace"), {"num_inference_steps": 10}, {}


def _case_dpm2(schedule):
    from diffusers import KDPM2DiscreteScheduler

    # The DPM2 step on the Uniform schedule: A1111's default (Karras with the penultimate sigma
    # discarded) has no diffusers config, and KDPM2 rounds Karras timesteps before the UNet call.
    sigmas = sched.automatic_sigmas(schedule, 10)
    return "DPM2", sigmas, {}, KDPM2DiscreteScheduler(**BETAS, timestep_spacing="linspace"), {"num_inference_steps": 10}, {}


def _case_lms(schedule):
    from diffusers.utils import is_scipy_available

    if not is_scipy_available():
        pytest.skip("diffusers' LMSDiscreteScheduler needs scipy, which the test requirements do not install")
    from diffusers import LMSDiscreteScheduler

    return "LMS", None, {}, LMSDiscreteScheduler(**BETAS, timestep_spacing="linspace"), {"num_inference_steps": 10}, {}


def _ddim_config():
    return dict(**BETAS, steps_offset=1, timestep_spacing="leading", set_alpha_to_one=False, clip_sample=False)


def _case_ddim(schedule):
    from diffusers import DDIMScheduler

    # CompVis "uniform" discretisation = diffusers' leading spacing with steps_offset 1.
    return "DDIM", None, {}, DDIMScheduler(**_ddim_config()), {"num_inference_steps": 10}, {}


def _case_ddim_eta(schedule):
    from diffusers import DDIMScheduler

    return "DDIM", None, {"eta": 0.5}, DDIMScheduler(**_ddim_config()), {"num_inference_steps": 10}, {"step": {"eta": 0.5}}


def _case_plms(schedule):
    from diffusers import PNDMScheduler

    config = dict(**BETAS, skip_prk_steps=True, steps_offset=1, timestep_spacing="leading", set_alpha_to_one=False)
    return "PLMS", None, {}, PNDMScheduler(**config), {"num_inference_steps": 10}, {}


def _dpmpp_config(**extra):
    return dict(**BETAS, algorithm_type="dpmsolver++", solver_order=2, final_sigmas_type="zero", lower_order_final=True, **extra)


def _case_dpmpp_2m_uniform(schedule):
    from diffusers import DPMSolverMultistepScheduler

    # "Uniform" schedule: 10 whole timesteps 999, 888, ..., 0 handed over as custom timesteps.
    sigmas = get_sigmas("Uniform", "DPM++ 2M", schedule, 10)
    return "DPM++ 2M", sigmas, {}, DPMSolverMultistepScheduler(**_dpmpp_config()), {"timesteps": _uniform_timesteps(10)}, {}


def _case_dpmpp_2m_karras(schedule):
    from diffusers import DPMSolverMultistepScheduler

    # Automatic = Karras between the model's sigma_min and sigma_max = use_karras_sigmas.
    scheduler = DPMSolverMultistepScheduler(**_dpmpp_config(use_karras_sigmas=True))
    return "DPM++ 2M", None, {}, scheduler, {"num_inference_steps": 10}, {"model_t": _fractional_t}


def _case_dpmpp_2m_sde(schedule):
    from diffusers import DPMSolverMultistepScheduler

    # Automatic = Exponential; A1111's DPM++ 2M SDE uses the midpoint solver.
    config = _dpmpp_config(use_exponential_sigmas=True)
    config.update(algorithm_type="sde-dpmsolver++", solver_type="midpoint")
    # diffusers draws this scheduler's noise in float32 (the others in the latent's dtype).
    extra = {"noise_dtype": torch.float32, "model_t": _fractional_t}
    return "DPM++ 2M SDE", None, {}, DPMSolverMultistepScheduler(**config), {"num_inference_steps": 10}, extra


def _case_unipc(schedule):
    from diffusers import UniPCMultistepScheduler

    # A1111's defaults: bh1, order 3, lower order at the end, time-uniform timesteps ending at
    # timestep 0's sigma. With 9 steps linspace(999, 0, 10) are whole timesteps, which is what
    # diffusers' linspace spacing with final_sigmas_type="sigma_min" visits.
    config = dict(
        **BETAS, solver_order=3, solver_type="bh1", predict_x0=True, lower_order_final=True,
        final_sigmas_type="sigma_min", timestep_spacing="linspace",
    )
    return "UniPC", None, {}, UniPCMultistepScheduler(**config), {"num_inference_steps": 9}, {}


def _case_lcm(schedule):
    from diffusers import LCMScheduler

    # A1111 spaces LCM's steps over the 50-step distillation grid (ending at timestep 19);
    # diffusers picks other grid points by default, so it gets ours as custom timesteps.
    scheduler = LCMScheduler(**BETAS, original_inference_steps=50, timestep_scaling=10.0)
    return "LCM", None, {"schedule": schedule}, scheduler, {"timesteps": sched.lcm_timesteps(6)}, {}


PARITY_CASES = {
    "Euler": _case_euler,
    "Euler a": _case_euler_a,
    "Heun": _case_heun,
    "DPM2": _case_dpm2,
    "LMS": _case_lms,
    "DDIM": _case_ddim,
    "DDIM eta 0.5": _case_ddim_eta,
    "PLMS": _case_plms,
    "DPM++ 2M Uniform": _case_dpmpp_2m_uniform,
    "DPM++ 2M Karras": _case_dpmpp_2m_karras,
    "DPM++ 2M SDE": _case_dpmpp_2m_sde,
    "UniPC": _case_unipc,
    "LCM": _case_lcm,
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_matches_diffusers(case):
    # Both sides on diffusers' alphas_cumprod (it computes SD's betas in float32, 9e-6 from ours).
    schedule = _diffusers_schedule()
    name, sigmas, options, scheduler, set_kwargs, extra = PARITY_CASES[case](schedule)
    assert torch.equal(DiscreteSchedule(scheduler.alphas_cumprod).sigmas, schedule.sigmas)
    sampler = S.SAMPLERS[name]
    steps = set_kwargs.get("num_inference_steps") or len(set_kwargs.get("timesteps") or set_kwargs["sigmas"][:-1])
    if sigmas is None:
        sigmas = sampler.sigmas(schedule, steps)
    sigmas = sigmas.double()

    unet = ToyUNet()
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x_T = sampler.initial_latent(noise, sigmas)
    ours_gen, theirs_gen = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)

    def noise_source(like):
        return torch.randn(like.shape, generator=ours_gen, dtype=extra.get("noise_dtype", like.dtype)).to(like.dtype)

    ours = sampler.sample(_our_model(unet, schedule), x_T, sigmas, noise=noise_source, **options)
    calls_ours, unet.calls = unet.calls, 0

    # Schedulers that work on DDPM-scaled latents (init_noise_sigma 1) get our starting latent in
    # their scaling, x / sqrt(1 + sigma_0^2); A1111 starts k-diffusion samplers at sigma_0 * noise.
    variance_preserving = float(scheduler.init_noise_sigma) == 1.0
    latents = x_T / math.sqrt(1 + float(sigmas[0]) ** 2) if variance_preserving else x_T
    theirs = _run_diffusers(
        scheduler, unet, latents, set_kwargs, theirs_gen, step_kwargs=extra.get("step"), model_t=extra.get("model_t"),
    )
    error = float((ours - theirs).abs().max())
    print(f"{case}: max abs error {error:.2e} over |x| up to {float(theirs.abs().max()):.2f}; UNet calls {calls_ours} / {unet.calls}")
    assert ours.abs().mean() > 0.1  # a real latent, not a vanishing one
    assert calls_ours == unet.calls
    assert error < TOLERANCE


# --- convergence on a Gaussian toy problem ----------------------------------------------------

MU = torch.tensor([0.4, -0.8], dtype=torch.float64).view(1, 2, 1, 1)
STD = torch.tensor([0.5, 1.2], dtype=torch.float64).view(1, 2, 1, 1)


def gaussian_denoiser(x, sigma):
    sigma = float(sigma)
    return (STD**2 * x + sigma**2 * MU) / (STD**2 + sigma**2)


def consistency_function(x, sigma):
    """The ideal consistency model for the toy data: the probability-flow ODE's end point."""
    sigma = float(sigma)
    return MU + (x - MU) * STD / (STD**2 + sigma**2) ** 0.5


def exact_flow(x_T, sigma_from: float, sigma_to: float):
    """The probability-flow ODE's exact solution for the toy data."""
    return MU + (x_T - MU) * ((STD**2 + sigma_to**2) / (STD**2 + sigma_from**2)) ** 0.5


# (sampler, schedule type, max abs error at 50 steps, least error ratio from 50 to 100 steps).
# |x_T| reaches ~50 and the result ~4. The ratios are each method's order (first order: ~2,
# second: ~4); PLMS's pseudo-multistep on a grid uneven in sigma has no clean rate.
DETERMINISTIC = [
    ("Euler", "Automatic", 0.12, 1.7),
    ("Heun", "Automatic", 5e-3, 3.0),
    ("DPM2", "Automatic", 4e-3, 3.0),
    ("DPM++ 2M", "Automatic", 7e-3, 3.0),
    ("LMS", "Automatic", 1.5e-3, 4.0),
    ("DDIM", "Automatic", 0.12, 1.7),
    ("PLMS", "Automatic", 8e-3, None),
    ("UniPC", "Automatic", 5e-2, 2.0),  # time-uniform: the last steps are long in log-sigma
    ("UniPC", "Karras", 2e-4, 8.0),
]


def _ode_error(name, label, steps):
    sampler = S.SAMPLERS[name]
    sigmas = get_sigmas(label, name, SCHEDULE, steps).double()
    z = torch.randn(1, 2, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x_T = sampler.initial_latent(z, sigmas)
    out = sampler.sample(gaussian_denoiser, x_T, sigmas)
    start, end = float(sigmas[0]), float(sigmas[-1])
    if end > 0:
        # DDIM-type: the ODE to timestep 0's sigma, returned in the model's own scaling.
        target = exact_flow(x_T, start, end) / math.sqrt(1 + end**2)
    elif name == "LMS":
        target = exact_flow(x_T, start, 0.0)  # its last step is a multistep step like the others
    else:
        # A1111's last step from the smallest sigma to 0 is first order, i.e. the denoised
        # estimate there (off the ODE's end by (x - mu) sigma_min^2 / 2 s^2, 2.5e-3 here).
        last = float(sigmas[-2])
        target = gaussian_denoiser(exact_flow(x_T, start, last), last)
    return float((out - target).abs().max())


@pytest.mark.parametrize("name, label, tolerance, ratio", DETERMINISTIC, ids=[f"{n}-{l}" for n, l, *_ in DETERMINISTIC])
def test_deterministic_samplers_solve_the_ode(name, label, tolerance, ratio):
    error_50 = _ode_error(name, label, 50)
    error_100 = _ode_error(name, label, 100)
    print(f"{name} ({label}): max abs error {error_50:.2e} at 50 steps, {error_100:.2e} at 100")
    assert error_50 < tolerance
    if ratio is not None:
        assert error_50 / error_100 > ratio


STOCHASTIC = ["Euler a", "DPM2 a", "DPM++ 2S a", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 3M SDE", "Restart", "LCM"]


def _euler_ancestral_std(sigmas, s):
    """Euler a's exact output std for the toy data: its step is linear in x, so the variance follows
    var' = var (1 + (sigma_down - sigma) sigma / (s^2 + sigma^2))^2 + sigma_up^2."""
    var = s**2 + sigmas[0] ** 2
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        down, up = S.get_ancestral_step(a, b)
        var = var * (1 + (down - a) * a / (s**2 + a**2)) ** 2 + up**2
    return math.sqrt(var)


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_samplers_reach_the_data_distribution(name):
    """From x_T drawn from the exact marginal N(mu, s^2 + sigma_max^2), the samples' per-channel
    mean and std must be those of the data, N(mu, s^2), within 0.04 s over 16384 samples a
    channel (5 standard errors of the mean, 7 of the std, leaving room for the discretisation
    bias at 50 steps). Euler a is first order and 10% narrow at 50 steps (A1111's too): its std is
    checked against the exact value for its steps instead."""
    sampler = S.SAMPLERS[name]
    sigmas = sampler.sigmas(SCHEDULE, 50).double()
    g = torch.Generator().manual_seed(3)
    x_T = MU + (STD**2 + float(sigmas[0]) ** 2) ** 0.5 * torch.randn(1, 2, 128, 128, generator=g, dtype=torch.float64)
    model = consistency_function if name == "LCM" else gaussian_denoiser
    out = sampler.sample(model, x_T, sigmas, noise=lambda like: torch.randn(like.shape, generator=g, dtype=like.dtype))
    mean, std = out.mean(dim=(0, 2, 3)), out.std(dim=(0, 2, 3))
    expected_std = STD.flatten()
    if name == "Euler a":
        expected_std = torch.tensor([_euler_ancestral_std(sigmas.tolist(), float(s)) for s in STD.flatten()], dtype=torch.float64)
    print(f"{name}: mean {mean.tolist()} std {std.tolist()} (expected {expected_std.tolist()})")
    assert torch.all((mean - MU.flatten()).abs() < 0.04 * STD.flatten())
    assert torch.all((std - expected_std).abs() < 0.04 * STD.flatten())


def test_sde_samplers_depend_on_their_noise():
    sigmas = S.SAMPLERS["DPM++ 2M SDE"].sigmas(SCHEDULE, 10).double()
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * float(sigmas[0])
    runs = [
        S.sample_dpmpp_2m_sde(gaussian_denoiser, x, sigmas, noise=lambda like, g=torch.Generator().manual_seed(seed): torch.randn(like.shape, generator=g, dtype=like.dtype))
        for seed in (0, 0, 1)
    ]
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])
    deterministic = S.sample_dpmpp_2m_sde(gaussian_denoiser, x, sigmas, eta=0.0, noise=lambda like: 1 / 0)
    assert torch.isfinite(deterministic).all()  # eta 0 never asks for noise


# --- schedules ----------------------------------------------------------------------------


@pytest.mark.parametrize("label", list(sched.SCHEDULES))
@pytest.mark.parametrize("steps", [1, 10, 25])
def test_schedule_shape(label, steps):
    sigmas = get_sigmas(label, "Euler", SCHEDULE, steps)
    assert sigmas.dtype == torch.float32
    assert len(sigmas) == steps + 1  # (25 and 10 divide 1000, so A1111's DDIM type keeps the count)
    assert float(sigmas[-1]) == 0 and torch.all(sigmas[:-1] > 0)
    assert torch.all(sigmas[1:] < sigmas[:-1])
    if label == "DDIM":  # the sigma of timestep 1 + 1000//steps * (steps - 1)
        assert float(sigmas[0]) == pytest.approx(float(SCHEDULE.sigmas[1 + 1000 // steps * (steps - 1)]))
    elif label == "Align Your Steps" and steps == 1:  # A1111 resamples the table to its last value
        assert float(sigmas[0]) == pytest.approx(0.029)
    else:
        assert float(sigmas[0]) == pytest.approx(SCHEDULE.sigma_max, rel=1e-3)


def test_schedule_values():
    lo, hi = SCHEDULE.sigma_min, SCHEDULE.sigma_max
    karras = get_sigmas("Karras", "Euler", SCHEDULE, 10)[:-1].double()
    assert torch.allclose(karras ** (1 / 7), torch.linspace(hi ** (1 / 7), lo ** (1 / 7), 10, dtype=torch.float64), rtol=1e-6)
    exponential = get_sigmas("Exponential", "Euler", SCHEDULE, 10)
    assert torch.allclose(exponential[:-1].double().log(), torch.linspace(math.log(hi), math.log(lo), 10, dtype=torch.float64), atol=1e-6)
    assert torch.allclose(get_sigmas("Polyexponential", "Euler", SCHEDULE, 10), exponential)
    uniform = get_sigmas("Uniform", "Euler", SCHEDULE, 10)
    assert torch.allclose(get_sigmas("Normal", "Euler", SCHEDULE, 10), uniform, rtol=1e-6)
    # 10 steps: timesteps 999, 888, ..., 0 are whole, so the sigmas are the table's.
    assert torch.allclose(uniform[:-1], SCHEDULE.sigmas[_uniform_timesteps(10)], rtol=1e-6)
    sgm = get_sigmas("SGM Uniform", "Euler", SCHEDULE, 9)  # timesteps 999, 888, ..., 111
    assert torch.allclose(sgm[:-1], SCHEDULE.sigmas[[999 - 111 * k for k in range(9)]], rtol=1e-6)
    assert get_sigmas("Simple", "Euler", SCHEDULE, 4)[:-1].tolist() == SCHEDULE.sigmas[[999, 749, 499, 249]].tolist()
    assert get_sigmas("DDIM", "Euler", SCHEDULE, 4)[:-1].tolist() == SCHEDULE.sigmas[[751, 501, 251, 1]].tolist()
    assert len(get_sigmas("DDIM", "Euler", SCHEDULE, 7)) == 9  # A1111: 1000 // 7 = 142 gives 8 steps
    beta = get_sigmas("Beta", "Euler", SCHEDULE, 11)[:-1].double()
    assert float(beta[5]) == pytest.approx((lo + hi) / 2, rel=1e-6)  # Beta(0.6, 0.6) is symmetric
    assert torch.allclose(beta + beta.flip(0), torch.full_like(beta, lo + hi), rtol=1e-6)


def test_align_your_steps():
    for family, table in (("sd1", sched.AYS_SD1), ("sdxl", sched.AYS_SDXL)):
        assert get_sigmas("Align Your Steps", "Euler", SCHEDULE, 11, family=family)[:-1].tolist() == pytest.approx(table)
        resampled = get_sigmas("Align Your Steps", "Euler", SCHEDULE, 21, family=family)[:-1].double()
        # 21 points over the 11-point table: every other one is a table value, the rest log-midpoints.
        assert resampled[::2].tolist() == pytest.approx(table, rel=1e-6)
        midpoints = (torch.tensor(table[:-1], dtype=torch.float64) * torch.tensor(table[1:], dtype=torch.float64)) ** 0.5
        assert resampled[1::2].tolist() == pytest.approx(midpoints.tolist(), rel=1e-6)
    ten = get_sigmas("Align Your Steps", "Euler", SCHEDULE, 10)
    assert len(ten) == 11 and float(ten[0]) == pytest.approx(14.615) and float(ten[-2]) == pytest.approx(0.029)


def test_beta_quantiles():
    q = np.linspace(0, 1, 11)
    assert sched.beta_ppf(q, 1, 1) == pytest.approx(q, abs=1e-12)
    assert sched.beta_ppf(q, 1, 2) == pytest.approx(1 - (1 - q) ** 0.5, abs=1e-12)  # CDF 1 - (1-x)^2
    assert sched.beta_ppf(q, 2, 1) == pytest.approx(q**0.5, abs=1e-12)  # CDF x^2
    x = sched.beta_ppf(q, 0.6, 0.6)
    assert x == pytest.approx(1 - x[::-1], abs=1e-12) and x[5] == pytest.approx(0.5)
    # Against the CDF by quadrature: substitute x = u^(1/a) near 0 to remove the singularity.
    u = np.linspace(0, x[3] ** 0.6, 200001)
    integrand = (1 - u ** (1 / 0.6)) ** (-0.4) / 0.6
    cdf = np.sum((integrand[1:] + integrand[:-1]) / 2 * np.diff(u)) / math.exp(2 * math.lgamma(0.6) - math.lgamma(1.2))
    assert cdf == pytest.approx(q[3], abs=1e-6)


def test_beta_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    q = np.linspace(0, 1, 17)
    assert sched.beta_ppf(q, 0.6, 0.6) == pytest.approx(stats.beta.ppf(q, 0.6, 0.6), abs=1e-10)


def test_sampler_default_schedules():
    def automatic(name, steps=10):
        return get_sigmas("Automatic", name, SCHEDULE, steps)

    assert torch.equal(automatic("Euler"), sched.automatic_sigmas(SCHEDULE, 10))
    assert torch.equal(automatic("DPM++ 2M"), sched.karras_sigmas(SCHEDULE, 10))
    assert torch.equal(automatic("DPM++ 2M SDE"), sched.exponential_sigmas(SCHEDULE, 10))
    # DPM2 / DPM2 a / DPM++ 3M SDE: one more sigma, the penultimate dropped, whatever the type.
    eleven = sched.karras_sigmas(SCHEDULE, 11)
    assert torch.equal(automatic("DPM2"), torch.cat([eleven[:-2], eleven[-1:]]))
    eleven = sched.uniform_sigmas(SCHEDULE, 11)
    assert torch.equal(get_sigmas("Uniform", "DPM++ 3M SDE", SCHEDULE, 10), torch.cat([eleven[:-2], eleven[-1:]]))
    assert len(automatic("DPM2 a")) == 11
    # Discrete timesteps: DDIM/PLMS end at timestep 0's sigma, UniPC too, LCM on its grid then 0.
    assert torch.equal(automatic("DDIM"), sched.ddim_sigmas(SCHEDULE, 10)) and torch.equal(automatic("PLMS"), automatic("DDIM"))
    assert float(automatic("UniPC")[-1]) == pytest.approx(SCHEDULE.sigma_min) and len(automatic("UniPC")) == 11
    assert sched.lcm_timesteps(4) == [999, 679, 339, 19] and sched.lcm_timesteps(50) == list(range(999, 0, -20))
    assert automatic("LCM", 4)[:-1].tolist() == SCHEDULE.sigmas[[999, 679, 339, 19]].tolist()
    many = automatic("LCM", 60)
    assert len(many) == 61 and torch.all(many[1:] < many[:-1])
    # A sampler's explicit schedule type overrides its default.
    assert torch.equal(get_sigmas("Karras", "Euler", SCHEDULE, 10), sched.karras_sigmas(SCHEDULE, 10))
    assert torch.equal(get_sigmas("karras", S.SAMPLERS["Euler"], SCHEDULE, 10), get_sigmas("Karras", "Euler", SCHEDULE, 10))
    with pytest.raises(EngineError, match="Karras"):
        get_sigmas("Karas", "Euler", SCHEDULE, 10)


# --- sampler names ------------------------------------------------------------------------


def test_sampler_names():
    assert list(S.SAMPLERS) == [
        "Euler", "Euler a", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "DPM++ SDE",
        "DPM++ 2M SDE", "DPM++ 3M SDE", "LMS", "DDIM", "PLMS", "UniPC", "LCM", "Restart",
    ]
    for name in S.SAMPLERS:
        assert S.resolve_sampler_name(name) == (name, "Automatic")
        assert S.resolve_sampler_name(name.upper()) == (name, "Automatic")
    cases = {
        "DPM++ 2M Karras": ("DPM++ 2M", "Karras"),
        "DPM++ SDE Karras": ("DPM++ SDE", "Karras"),
        "Euler a": ("Euler a", "Automatic"),
        "DPM++ 2M SDE Exponential": ("DPM++ 2M SDE", "Exponential"),
        "dpm++ 2m sde karras": ("DPM++ 2M SDE", "Karras"),
        "DPM2 a Karras": ("DPM2 a", "Karras"),
        "LMS Karras": ("LMS", "Karras"),
        "Euler SGM Uniform": ("Euler", "SGM Uniform"),
        "Euler Uniform": ("Euler", "Uniform"),
        "DPM++ 2M Align Your Steps": ("DPM++ 2M", "Align Your Steps"),
        "k_euler_a": ("Euler a", "Automatic"),
        "k_euler_ancestral": ("Euler a", "Automatic"),
        "k_dpmpp_2m": ("DPM++ 2M", "Automatic"),
        "K_DPMPP_2M_KA": ("DPM++ 2M", "Karras"),
        "k_dpmpp_2m_sde_exp": ("DPM++ 2M SDE", "Exponential"),
        "k_lms": ("LMS", "Automatic"),
        "ddim": ("DDIM", "Automatic"),
        "plms": ("PLMS", "Automatic"),
        "k_lcm": ("LCM", "Automatic"),
        "  Euler   a ": ("Euler a", "Automatic"),
    }
    for name, expected in cases.items():
        assert S.resolve_sampler_name(name) == expected, name
    assert S.get_sampler("DPM++ 2M Karras") is S.SAMPLERS["DPM++ 2M"]


@pytest.mark.parametrize("name", ["Euler b", "DPM++ 2M Karas", "k_euler_b", "", "Karras"])
def test_unknown_sampler_names_fail(name):
    with pytest.raises(EngineError) as info:
        S.resolve_sampler_name(name)
    assert "DPM++ 2M SDE" in str(info.value) and "Euler a" in str(info.value)  # the known names


def test_sampler_options():
    assert S.SAMPLERS["Euler a"].defaults == {"eta": 1.0, "s_noise": 1.0}
    assert S.SAMPLERS["DDIM"].defaults == {"eta": 0.0}
    assert S.SAMPLERS["DPM++ 2M SDE"].defaults["solver_type"] == "midpoint"
    sigmas = S.SAMPLERS["Euler a"].sigmas(SCHEDULE, 5).double()
    x = torch.ones(1, 2, 4, 4, dtype=torch.float64) * float(sigmas[0])
    # eta 0 makes Euler a deterministic (= Euler); options a sampler does not take are ignored.
    a = S.SAMPLERS["Euler a"].sample(gaussian_denoiser, x, sigmas, eta=0.0, noise=lambda like: 1 / 0)
    b = S.SAMPLERS["Euler"].sample(gaussian_denoiser, x, sigmas, eta=0.0, s_noise=2.0)
    assert torch.allclose(a, b)


# --- per-image noise ----------------------------------------------------------------------

SHAPE = (4, 6, 8)


def _draws(noise: ImageNoise, n: int):
    like = torch.empty(len(noise.seeds), *noise.shape)
    return [noise.first()] + [noise(like) for _ in range(n)]


def test_image_noise_is_per_image():
    first = ImageNoise([5], SHAPE).first()
    assert torch.equal(first[0], torch.randn(SHAPE, generator=torch.Generator("cpu").manual_seed(5)))
    assert torch.equal(first, ImageNoise([5], SHAPE).first())
    assert not torch.equal(first, ImageNoise([6], SHAPE).first())
    batch = _draws(ImageNoise([5, 6], SHAPE), 2)
    single = [_draws(ImageNoise([seed], SHAPE), 2) for seed in (5, 6)]
    for k in range(3):
        assert torch.equal(batch[k], torch.cat([single[0][k], single[1][k]]))
    # Later draws continue the image's own generator.
    g = torch.Generator("cpu").manual_seed(6)
    expected = [torch.randn(SHAPE, generator=g) for _ in range(3)]
    assert all(torch.equal(batch[k][1], expected[k]) for k in range(3))


def test_image_noise_source():
    noise = ImageNoise([1, 2], SHAPE)
    like = torch.zeros(2, *SHAPE, dtype=torch.float64)
    assert torch.equal(noise(like), ImageNoise([1, 2], SHAPE).first().double())  # before first(): the first draw
    assert noise(like).dtype == torch.float64
    with pytest.raises(ValueError):
        noise(torch.zeros(1, *SHAPE))


def test_variation_seed():
    plain = ImageNoise([5, 6], SHAPE).first()
    assert torch.equal(ImageNoise([5, 6], SHAPE, subseeds=[9, 10], subseed_strength=0.0).first(), plain)
    full = ImageNoise([5, 6], SHAPE, subseeds=[9, 10], subseed_strength=1.0).first()
    assert torch.allclose(full, torch.stack([ImageNoise([9], SHAPE).first()[0], ImageNoise([10], SHAPE).first()[0]]), atol=1e-5)
    half = ImageNoise([5], SHAPE, subseeds=[9], subseed_strength=0.5).first()[0]
    a, b = plain[0], ImageNoise([9], SHAPE).first()[0]
    assert torch.allclose(half, slerp(0.5, a, b))
    assert not torch.allclose(half, a) and not torch.allclose(half, b)
    assert 0.8 < float(half.std()) < 1.2  # spherical, not linear, interpolation keeps the scale
    # A missing subseed is 0, and the variation leaves later draws alone.
    assert torch.equal(ImageNoise([5, 6], SHAPE, subseeds=[9], subseed_strength=0.3).first()[1],
                       ImageNoise([6], SHAPE, subseeds=[0], subseed_strength=0.3).first()[0])
    assert torch.equal(_draws(ImageNoise([5], SHAPE, [9], 0.5), 1)[1], _draws(ImageNoise([5], SHAPE), 1)[1])


def test_seed_resize_keeps_the_centre():
    old = ImageNoise([5], (4, 6, 8)).first()[0]  # a 64x48 picture's latent noise
    grown = ImageNoise([5], (4, 12, 16), seed_resize_from=(64, 48)).first()[0]
    assert torch.equal(grown[:, 3:9, 4:12], old)
    outside = torch.randn((4, 12, 16), generator=torch.Generator().manual_seed(5))
    assert torch.equal(grown[:, :3], outside[:, :3]) and torch.equal(grown[:, :, :4], outside[:, :, :4])
    big = ImageNoise([5], (4, 16, 20)).first()[0]  # a 160x128 picture's
    shrunk = ImageNoise([5], (4, 12, 16), seed_resize_from=(160, 128)).first()[0]
    assert torch.equal(shrunk, big[:, 2:14, 2:18])
    # The same size is no resize; later draws follow the one full-size draw.
    assert torch.equal(ImageNoise([5], (4, 6, 8), seed_resize_from=(64, 48)).first()[0], old)
    g = torch.Generator().manual_seed(5)
    torch.randn((4, 12, 16), generator=g)
    later = _draws(ImageNoise([5], (4, 12, 16), seed_resize_from=(64, 48)), 1)[1][0]
    assert torch.equal(later, torch.randn((4, 12, 16), generator=g))
    with_variation = ImageNoise([5], (4, 12, 16), subseeds=[9], subseed_strength=1.0, seed_resize_from=(64, 48)).first()[0]
    assert torch.allclose(with_variation[:, 3:9, 4:12], ImageNoise([9], (4, 6, 8)).first()[0], atol=1e-5)


@pytest.mark.parametrize("name", ["Euler a", "DPM++ SDE", "DPM++ 2M SDE", "LCM"])
def test_stochastic_sampling_is_per_image(name):
    """With ImageNoise as the noise source, an image is the same made alone or in a batch."""
    sampler = S.SAMPLERS[name]
    sigmas = sampler.sigmas(SCHEDULE, 8).double()

    def run(seeds):
        noise = ImageNoise(seeds, (2, 4, 4))
        x = sampler.initial_latent(noise.first().double(), sigmas)
        return sampler.sample(gaussian_denoiser, x, sigmas, noise=noise)

    batch = run([5, 6])
    assert torch.equal(batch, torch.cat([run([5]), run([6])]))
    assert not torch.allclose(batch[0], batch[1])


# --- callbacks ----------------------------------------------------------------------------


class Stop(Exception):
    pass


@pytest.mark.parametrize("name", list(S.SAMPLERS))
def test_callback_once_per_step_and_stops(name):
    sampler = S.SAMPLERS[name]
    sigmas = sampler.sigmas(SCHEDULE, 6).double()
    x = sampler.initial_latent(torch.randn(1, 2, 4, 4, dtype=torch.float64), sigmas)
    calls = []

    def model(x, sigma):
        calls.append(float(sigma))
        return gaussian_denoiser(x, sigma)

    seen = []
    sampler.sample(model, x, sigmas, callback=lambda i, sigma, x, denoised: seen.append((i, sigma)))
    assert [i for i, _ in seen] == list(range(len(sigmas) - 1))
    assert [sigma for _, sigma in seen] == pytest.approx(sigmas[:-1].tolist())

    def stop_at_two(i, sigma, x, denoised):
        if i == 2:
            raise Stop
        seen.append(i)

    calls.clear()
    seen.clear()
    with pytest.raises(Stop):
        sampler.sample(model, x, sigmas, callback=stop_at_two)
    assert seen == [0, 1]
    assert min(calls) >= float(sigmas[3]) - 1e-6  # no model call past the stopped step
