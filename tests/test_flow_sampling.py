"""Flow-matching (SD3 / FLUX) schedules, denoiser and samplers (core/sampling/flow.py).

Oracle: diffusers' FlowMatchEulerDiscreteScheduler, configured as the SD3 and FLUX checkpoints'
scheduler_config.json are and called as StableDiffusion3Pipeline / FluxPipeline call it (FLUX:
``sigmas = np.linspace(1, 1/n, n)`` and ``mu = calculate_shift(image tokens)``).

Statistics: for x0 ~ N(mu, tau^2) the flow marginal at sigma is x = (1 - s) x0 + s n, and the
exact clean estimate is D(x, s) = mu + (1 - s) tau^2 / ((1 - s)^2 tau^2 + s^2) (x - (1 - s) mu),
so the exact velocity is (x - D) / s.
"""
import math

import numpy as np
import pytest
import torch

from core.errors import EngineError
from core.sampling import samplers as S
from core.sampling.flow import (
    FLOW_AUTOMATIC, FlowDenoiser, FlowSchedule, flow_sampler, flux_mu, flux_shift, shift_sigma, unshift_sigma,
)
from core.sampling.schedules import SCHEDULES, DiscreteSchedule, get_sigmas

diffusers = pytest.importorskip("diffusers")
from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: E402

SD3_CONFIG = dict(num_train_timesteps=1000, shift=3.0)
FLUX_DEV_CONFIG = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                       base_image_seq_len=256, max_image_seq_len=4096)
FLUX_SCHNELL_CONFIG = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False, base_shift=0.5,
                           max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)


def diffusers_mu(height: int, width: int) -> float:
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    # FluxPipeline: latents of 2 * (h // 16) rows, packed into 2x2 patches.
    return calculate_shift((height // 16) * (width // 16), 256, 4096, 0.5, 1.15)


def flux_pipeline_scheduler(config: dict, steps: int, height: int, width: int) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=diffusers_mu(height, width))
    return scheduler


def sd3_pipeline_scheduler(steps: int) -> FlowMatchEulerDiscreteScheduler:
    scheduler = FlowMatchEulerDiscreteScheduler(**SD3_CONFIG)
    scheduler.set_timesteps(steps)
    return scheduler


# --- shifts and the table -------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(1024, 1024), (512, 512), (768, 1344), (256, 256), (1536, 1536)])
def test_flux_mu_is_diffusers_calculate_shift(height, width):
    assert flux_mu(height, width) == pytest.approx(diffusers_mu(height, width), abs=1e-12)
    assert flux_shift(height, width) == pytest.approx(math.exp(diffusers_mu(height, width)), rel=1e-12)


def test_flux_exponential_time_shift_is_the_sd3_shift_with_exp_mu():
    t = np.linspace(0.001, 1, 1000)
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_CONFIG)
    for mu in (0.5, 0.63, 1.15, 1.4):
        flux_form = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
        np.testing.assert_allclose(shift_sigma(t, math.exp(mu)), flux_form, rtol=1e-13, atol=0)
        np.testing.assert_allclose(scheduler.time_shift(mu, 1.0, t), flux_form, rtol=1e-13, atol=0)
        np.testing.assert_allclose(unshift_sigma(flux_form, math.exp(mu)), t, rtol=1e-12)


def test_sd3_table_is_diffusers_training_table():
    oracle = FlowMatchEulerDiscreteScheduler(**SD3_CONFIG)
    ours = FlowSchedule.sd3()
    assert torch.allclose(ours.sigmas, oracle.sigmas.flip(0), atol=1e-6, rtol=0)
    assert ours.sigma_max == 1.0
    assert ours.sigma_min == pytest.approx(oracle.sigma_min, abs=1e-7)


def test_table_index_and_sigma_convert_both_ways():
    schedule = FlowSchedule.flux(832, 1216)
    t = torch.tensor([0.0, 0.25, 10.5, 500.0, 998.75, 999.0])
    assert torch.allclose(schedule.sigma_to_t(schedule.t_to_sigma(t)), t, atol=2e-3)
    whole = torch.tensor([0, 37, 999])
    assert torch.equal(schedule.t_to_sigma(whole.float()), schedule.sigmas[whole])


def test_network_timestep_is_sigma_times_1000_for_sd3_and_sigma_for_flux():
    sigma = torch.tensor([1.0, 0.5, 0.0123])
    assert torch.allclose(FlowSchedule.sd3().network_timestep(sigma), sigma * 1000)
    assert torch.equal(FlowSchedule.flux(1024, 1024).network_timestep(sigma), sigma)


# --- sigmas against diffusers ---------------------------------------------------------------


def test_sd3_normal_sigmas_equal_the_sd3_pipeline_schedule():
    ours = get_sigmas("Normal", flow_sampler("Euler"), FlowSchedule.sd3(), 28)
    assert torch.allclose(ours, sd3_pipeline_scheduler(28).sigmas, atol=1e-6, rtol=0)


def test_sd3_simple_sigmas_equal_diffusers_on_fluxpipeline_grid():
    ours = get_sigmas(None, flow_sampler("Euler"), FlowSchedule.sd3(), 28)
    scheduler = FlowMatchEulerDiscreteScheduler(**SD3_CONFIG)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / 28, 28))
    assert torch.allclose(ours, scheduler.sigmas, atol=1e-6, rtol=0)


@pytest.mark.parametrize("height,width", [(1024, 1024), (512, 512), (768, 1344)])
def test_flux_dev_automatic_sigmas_equal_fluxpipeline(height, width):
    ours = get_sigmas(None, flow_sampler("Euler"), FlowSchedule.flux(height, width), 28)
    oracle = flux_pipeline_scheduler(FLUX_DEV_CONFIG, 28, height, width).sigmas
    assert ours.shape == oracle.shape
    assert torch.allclose(ours, oracle, atol=1e-6, rtol=0)


def test_flux_dev_uniform_sigmas_equal_diffusers_default_spacing():
    scheduler = FlowMatchEulerDiscreteScheduler(**FLUX_DEV_CONFIG)
    scheduler.set_timesteps(20, mu=diffusers_mu(1024, 768))
    ours = get_sigmas("Uniform", flow_sampler("Euler"), FlowSchedule.flux(1024, 768), 20)
    assert torch.allclose(ours, scheduler.sigmas, atol=1e-6, rtol=0)


def test_flux_dev_shift_depends_on_resolution():
    small = get_sigmas(None, "Euler", FlowSchedule.flux(512, 512), 28)
    large = get_sigmas(None, "Euler", FlowSchedule.flux(1024, 1024), 28)
    # More tokens, more shift: every intermediate sigma is larger at 1024.
    assert bool((large[1:-1] > small[1:-1] + 1e-3).all())


def test_flux_schnell_four_steps_equal_fluxpipeline():
    ours = get_sigmas(None, flow_sampler("Euler"), FlowSchedule.flux(1024, 1024, dynamic_shift=False), 4)
    oracle = flux_pipeline_scheduler(FLUX_SCHNELL_CONFIG, 4, 1024, 1024).sigmas
    assert torch.allclose(ours, oracle, atol=1e-6, rtol=0)
    assert ours.tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0], abs=1e-7)


@pytest.mark.parametrize("label", [label for label in SCHEDULES if label != "Align Your Steps"])
@pytest.mark.parametrize("sampler_name", ["Euler", "DPM2"])
def test_every_schedule_type_gives_valid_flow_sigmas(label, sampler_name):
    schedule = FlowSchedule.sd3()
    sigmas = get_sigmas(label, flow_sampler(sampler_name), schedule, 12)
    assert sigmas.dtype == torch.float32 and float(sigmas[-1]) == 0.0
    assert len(sigmas) >= 13
    assert bool((sigmas[:-1] > 0).all()) and bool((sigmas[:-1] <= 1).all())
    assert bool((sigmas[1:] < sigmas[:-1]).all()), sigmas
    assert float(sigmas[-2]) >= schedule.sigma_min - 1e-7


def test_karras_on_flow_runs_between_the_table_ends():
    schedule = FlowSchedule.flux(1024, 1024)
    sigmas = get_sigmas("Karras", "Euler", schedule, 10)
    assert float(sigmas[0]) == pytest.approx(1.0, abs=1e-7)
    assert float(sigmas[-2]) == pytest.approx(schedule.sigma_min, rel=1e-5)


def test_align_your_steps_is_refused_on_flow():
    with pytest.raises(EngineError, match="Align Your Steps.*not for flow-matching"):
        get_sigmas("Align Your Steps", flow_sampler("Euler"), FlowSchedule.sd3(), 10)


def test_automatic_on_flow_is_simple_whatever_the_samplers_sd_default():
    schedule = FlowSchedule.sd3()
    for name in ("DPM++ 2M", "Euler a", "Heun"):
        sampler = flow_sampler(name)
        assert sampler.default_schedule == FLOW_AUTOMATIC == "Simple"
        assert torch.equal(get_sigmas(None, sampler, schedule, 9), get_sigmas("Simple", sampler, schedule, 9))
    # The registry's own samplers keep their SD defaults.
    assert S.get_sampler("DPM++ 2M").default_schedule == "Karras"


# --- the denoiser and an Euler run against diffusers ------------------------------------------


class ToyVelocity:
    """A stand-in velocity network, smooth in x and t, mixing channels and neighbours. ``t_unit``
    is its timestep's full scale (1000 for SD3, 1 for FLUX)."""

    def __init__(self, t_unit: float, channels: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.randn(channels, channels, generator=g) / channels**0.5
        self.bias = torch.randn(1, channels, 1, 1, generator=g)
        self.t_unit = t_unit

    def __call__(self, x, t):
        t = torch.as_tensor(t).to(x.dtype).reshape(-1, 1, 1, 1) / self.t_unit
        mixed = torch.einsum("oc,bchw->bohw", self.mix.to(x.dtype), x) + 0.5 * torch.roll(x, 1, dims=-1)
        return 0.8 * x - 0.6 * torch.tanh(mixed + self.bias.to(x.dtype) * torch.cos(3 * t)) + 0.2 * torch.sin(4 * t)


def diffusers_euler(scheduler, network, latent, timestep_unit: float):
    x = latent.clone()
    for t in scheduler.timesteps:
        velocity = network(x, (t / 1000 * timestep_unit).expand(x.shape[0]))
        x = scheduler.step(velocity, t, x).prev_sample
    return x


@pytest.mark.parametrize("family", ["sd3", "flux-dev", "flux-schnell"])
def test_euler_run_equals_diffusers_step_loop(family):
    steps = 4 if family == "flux-schnell" else 20
    if family == "sd3":
        schedule, label, unit = FlowSchedule.sd3(), "Normal", 1000.0
        scheduler = sd3_pipeline_scheduler(steps)
    else:
        schedule, label, unit = FlowSchedule.flux(768, 1024, dynamic_shift=family == "flux-dev"), None, 1.0
        config = FLUX_DEV_CONFIG if family == "flux-dev" else FLUX_SCHNELL_CONFIG
        scheduler = flux_pipeline_scheduler(config, steps, 768, 1024)
    network = ToyVelocity(unit)
    noise = torch.randn(2, 4, 12, 16, generator=torch.Generator().manual_seed(7))
    sampler = flow_sampler("Euler")
    sigmas = get_sigmas(label, sampler, schedule, steps)
    x = sampler.initial_latent(noise, sigmas, schedule)
    assert torch.equal(x, noise)  # sigma_max is 1: pure noise, as the pipelines start
    ours = sampler.sample(FlowDenoiser(network, schedule), x, sigmas)
    oracle = diffusers_euler(scheduler, network, noise, unit)
    assert float((ours - oracle).abs().max()) < 1e-5
    assert float((ours - noise).abs().max()) > 0.1  # it moved


def test_flow_denoiser_is_x_minus_sigma_v_in_float32_around_bf16_network():
    seen = {}

    def network(x, t, context, pooled=None):
        seen.update(dtype=x.dtype, t=t, context=context, pooled=pooled)
        return (x * 2 + t.reshape(-1, 1, 1, 1)).to(torch.bfloat16)

    schedule = FlowSchedule.sd3()
    x = torch.randn(2, 16, 4, 4)
    denoised = FlowDenoiser(network, schedule)(x, torch.tensor(0.25), "ctx", pooled="vec")
    assert denoised.dtype == torch.float32 and seen["dtype"] == torch.float32
    assert torch.equal(seen["t"], torch.tensor([250.0, 250.0]))
    assert (seen["context"], seen["pooled"]) == ("ctx", "vec")
    velocity = (x * 2 + 250).to(torch.bfloat16).float()
    assert torch.equal(denoised, x - 0.25 * velocity)


# --- noising --------------------------------------------------------------------------------


def test_img2img_noising_blends_on_flow_and_adds_on_sd():
    init, noise = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    flow, discrete = FlowSchedule.sd3(), DiscreteSchedule(torch.linspace(0.999, 0.005, 1000))
    assert torch.allclose(flow.noise_latent(init, noise, 0.6), 0.4 * init + 0.6 * noise, atol=1e-6)
    assert torch.allclose(discrete.noise_latent(init, noise, 0.6), init + 0.6 * noise, atol=1e-6)
    assert torch.equal(flow.initial_latent(noise, 1.0), noise)


def test_img2img_noising_equals_diffusers_scale_noise():
    """As SD3's img2img pipeline does it: the strength picks the starting timestep, then
    scale_noise blends the init latent with noise at that sigma."""
    steps, start = 28, 11
    scheduler = sd3_pipeline_scheduler(steps)
    scheduler.set_begin_index(start)
    init, noise = torch.randn(1, 16, 8, 8), torch.randn(1, 16, 8, 8)
    oracle = scheduler.scale_noise(init, scheduler.timesteps[start:start + 1], noise)
    sigmas = get_sigmas("Normal", "Euler", FlowSchedule.sd3(), steps)
    ours = FlowSchedule.noise_latent(init, noise, sigmas[start])
    assert torch.allclose(ours, oracle, atol=1e-6)


def test_ddim_type_samplers_keep_their_ddpm_scaled_start():
    sigmas, noise = torch.tensor([14.6, 1.0, 0.03]), torch.ones(3)
    ddim = S.get_sampler("DDIM")
    assert torch.allclose(ddim.initial_latent(noise, sigmas), noise * (1 + 14.6**2) ** 0.5)
    assert torch.allclose(S.get_sampler("Euler").initial_latent(noise, sigmas), noise * 14.6)


# --- ancestral samplers on flow: marginal statistics ------------------------------------------

MU, TAU = 1.5, 0.5


def exact_velocity(mu: float, tau: float):
    """The velocity network of data x0 ~ N(mu, tau^2) (timestep = sigma, as FLUX's)."""

    def network(x, t):
        s = t.reshape(-1, *[1] * (x.dim() - 1)).to(x)
        a = 1 - s
        denoised = mu + a * tau**2 / (a * a * tau**2 + s * s) * (x - a * mu)
        return (x - denoised) / s

    return network


def gaussian_noise(seed: int):
    g = torch.Generator().manual_seed(seed)
    return lambda like: torch.randn(like.shape, generator=g, dtype=like.dtype)


@pytest.mark.parametrize("sigma_from,sigma_to,eta", [(1.0, 0.9, 1.0), (0.7, 0.4, 1.0), (0.3, 0.05, 0.5), (0.5, 0.1, 1.5)])
def test_rectified_flow_ancestral_step_lands_on_the_flow_marginal(sigma_from, sigma_to, eta):
    """From an exact sample at sigma_down, rescaling and fresh noise give an exact sample at
    sigma_to: same mean, variance and covariance with x0 as (1 - s) x0 + s n. VE's noise-only
    step (sigma_up with down^2 + up^2 = to^2, no rescale) misses the mean."""
    sigma_down, sigma_up, scale = S.get_ancestral_step_flow(sigma_from, sigma_to, eta)
    assert 0 <= sigma_down < sigma_to and sigma_up > 0
    assert (scale * sigma_down) ** 2 + sigma_up**2 == pytest.approx(sigma_to**2, rel=1e-12)
    assert scale * (1 - sigma_down) == pytest.approx(1 - sigma_to, rel=1e-12)

    n = 400_000
    noise = gaussian_noise(1)
    x0 = MU + TAU * noise(torch.empty(n, dtype=torch.float64))
    x_down = (1 - sigma_down) * x0 + sigma_down * noise(x0)
    x_to = S._renoise(x_down, noise, sigma_up, scale, 1.0)
    mean, var = (1 - sigma_to) * MU, (1 - sigma_to) ** 2 * TAU**2 + sigma_to**2
    sd = math.sqrt(var)
    assert abs(float(x_to.mean()) - mean) < 5 * sd / math.sqrt(n)
    assert float(x_to.var()) / var == pytest.approx(1, abs=5 * math.sqrt(2 / n))
    covariance = float(((x_to - x_to.mean()) * (x0 - x0.mean())).mean())
    assert covariance == pytest.approx((1 - sigma_to) * TAU**2, abs=5 * sd * TAU / math.sqrt(n))

    # VE's step would leave the mean at (1 - ve_down) * mu: the mean check above would catch it.
    ve_down, _ = S.get_ancestral_step(sigma_from, sigma_to, eta)
    assert abs((1 - ve_down) * MU - mean) > 10 * sd / math.sqrt(n)


@pytest.mark.parametrize("name", ["Euler a", "DPM2 a", "DPM++ 2S a"])
def test_flow_ancestral_samplers_keep_every_marginal_for_a_point_mass(name):
    """x0 = mu exactly (tau 0): the clean estimate is exact, so after every step x must be
    distributed as (1 - s) mu + s n, whatever the step size."""
    schedule = FlowSchedule(shift=3.0)  # SD3's sigmas, FLUX's timestep convention
    sampler = flow_sampler(name)
    sigmas = get_sigmas(None, sampler, schedule, 12).double()
    n = 100_000
    x = sampler.initial_latent(torch.randn(n, 1, generator=torch.Generator().manual_seed(3), dtype=torch.float64),
                               sigmas, schedule)
    checked = []

    def check(i, sigma, latent, denoised):
        s = float(sigmas[i + 1])
        if s > 0:
            assert abs(float(latent.mean()) - (1 - s) * MU) < 5 * s / math.sqrt(n), (i, s)
            assert float(latent.std()) / s == pytest.approx(1, abs=5 / math.sqrt(2 * n)), (i, s)
            checked.append(i)

    out = sampler.sample(FlowDenoiser(exact_velocity(MU, 0.0), schedule), x, sigmas, callback=check, noise=gaussian_noise(4))
    assert len(checked) == len(sigmas) - 2
    assert torch.allclose(out, torch.full_like(out, MU), atol=1e-9)


@pytest.mark.parametrize("name", ["DPM2 a", "DPM++ 2S a"])
def test_flow_ancestral_samplers_reach_the_gaussian_data(name):
    """x0 ~ N(1.5, 0.5^2) with its exact velocity: 100 second-order ancestral steps end at the
    data's mean and standard deviation (within 3%); the VE noise step on the same run does not."""
    schedule = FlowSchedule(shift=3.0)
    n = 50_000
    start = torch.randn(n, 1, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    denoiser = FlowDenoiser(exact_velocity(MU, TAU), schedule)
    flow = flow_sampler(name)
    sigmas = get_sigmas("Normal", flow, schedule, 100).double()
    out = flow.sample(denoiser, flow.initial_latent(start, sigmas, schedule), sigmas, noise=gaussian_noise(6))
    assert float(out.mean()) == pytest.approx(MU, abs=0.02)
    assert float(out.std()) == pytest.approx(TAU, rel=0.03)
    ve_run = S.get_sampler(name).sample(denoiser, start.clone(), sigmas, noise=gaussian_noise(6))
    assert abs(float(ve_run.mean()) - MU) > 0.3


def test_flow_sampler_sets_the_flow_step_only_where_taken():
    assert flow_sampler("Euler a").defaults["flow"] is True
    assert flow_sampler("Euler a").defaults["eta"] == 1.0
    assert "flow" not in flow_sampler("Euler").defaults
    assert "flow" not in S.get_sampler("Euler a").defaults  # the SD registry is unchanged


# --- refusals -------------------------------------------------------------------------------


def test_flow_samplers_are_the_ode_and_ancestral_ones():
    valid = [name for name, sampler in S.SAMPLERS.items() if sampler.flow_ok]
    assert valid == ["Euler", "Euler a", "Heun", "DPM2", "DPM2 a", "DPM++ 2S a", "DPM++ 2M", "LMS"]


@pytest.mark.parametrize("name", [name for name, sampler in S.SAMPLERS.items() if not sampler.flow_ok])
def test_a_refused_sampler_names_itself(name):
    with pytest.raises(EngineError) as caught:
        flow_sampler(name)
    assert f"{name} is not for flow-matching models" in str(caught.value)
    assert caught.value.field == "sampler"


def test_refusal_accepts_a1111_aliases():
    with pytest.raises(EngineError, match="DPM\\+\\+ 2M SDE is not for flow-matching models"):
        flow_sampler("k_dpmpp_2m_sde")
    assert flow_sampler("k_euler_a").name == "Euler a"
