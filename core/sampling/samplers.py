"""Samplers: short pure functions over a denoiser ``model(x, sigma)`` and a sigma sequence.

Shape (k-diffusion's): ``fn(model, x, sigmas, callback=None, noise=None, **options) -> x`` where
x = x0 + sigma * eps (variance-exploding), ``sigmas`` decreases and ends in 0, and ``model``
returns the clean estimate. ``callback(step, sigma, x, denoised)`` runs after every step (for
progress and previews) and may raise to stop: nothing here catches it. ``noise(like)`` is the
injected Gaussian source for ancestral/SDE samplers (``torch.randn_like`` when None) so that seeds
reproduce across devices (see core.sampling.noise.ImageNoise).

The algorithms are A1111's (k-diffusion at the commit A1111 pins, plus A1111's own DDIM, PLMS,
UniPC, LCM and Restart), named as A1111 writes them in infotext. Differences worth knowing:

* DDIM-type samplers (DDIM, PLMS, UniPC) start from DDPM-scaled noise (``ddpm_initial_noise``),
  stop at the sigma of timestep 0 under their own discretisation and return the latent in the
  model's own (variance-preserving) scaling, as CompVis DDIM/PLMS and UniPC do. They accept any
  sigma sequence; one ending in 0 simply ends on a clean latent. DDIM and PLMS follow CompVis (and
  diffusers): ``steps`` model steps from timestep 1 + 1000//steps * (steps - 1) down to timestep 0.
  A1111 1.6+ reimplemented them with one step fewer (it stops at timestep 1, and steps that do not
  divide 1000 change the count); we keep the CompVis count.
* SDE samplers (DPM++ SDE, DPM++ 2M SDE, DPM++ 3M SDE): A1111 draws their noise from a torchsde
  Brownian tree seeded per image. We do not depend on torchsde: each step draws Gaussian
  increments from ``noise``. Increments of a Brownian path over disjoint sigma intervals are
  independent Gaussians, and DPM++ SDE's two noises inside a step are built from two increments
  (sigma_i -> sigma_mid -> sigma_i+1) exactly as the tree correlates them, so the noise has the
  same joint law as A1111's; only the realisation differs, so a seed gives a different (equally
  distributed) image than A1111 with these samplers.
* LCM applies LCM's boundary condition (c_skip, c_out at timestep * 10) to the denoiser output with
  the sample in DDPM scaling, as the LCM paper and diffusers do (A1111 uses the k-diffusion-scaled
  sample, a difference below 1e-5 since c_skip < 7e-6 on every LCM timestep). It needs the model's
  timesteps: pass ``schedule=`` (a DiscreteSchedule) or give ``model`` a ``schedule`` attribute
  (or a ``denoiser.schedule``, as CFGDenoiser has); without one the boundary condition is skipped.
* Flow-matching models (SD3, FLUX; see core.sampling.flow): the ODE samplers run unchanged on the
  clean estimate x - sigma * v. Euler a, DPM2 a and DPM++ 2S a take ``flow=True`` for the
  rectified-flow noise step (``get_ancestral_step_flow``); ``Sampler.flow_ok`` marks the samplers
  valid there and core.sampling.flow.flow_sampler refuses the rest.
* UniPC: A1111's defaults (bh1, order 3, lower order at the end, time-uniform timesteps over
  ``steps``; A1111 takes the number of steps from its DDIM timestep list, which differs when steps
  does not divide 1000).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Callable

import numpy as np
import torch

from core.errors import NOT_FOUND, EngineError
from core.sampling import schedules

Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None] | None
Noise = Callable[[torch.Tensor], torch.Tensor] | None


def to_d(x, sigma, denoised):
    """The ODE's derivative dx/dsigma."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up): the deterministic step target and the noise to add after it, so that
    sigma_down^2 + sigma_up^2 = sigma_to^2. eta scales the noise (0: deterministic)."""
    if not eta or sigma_to == 0:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    sigma_down = math.sqrt(max(sigma_to**2 - sigma_up**2, 0.0))
    return sigma_down, sigma_up


def get_ancestral_step_flow(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float, float]:
    """The rectified-flow ancestral step (x_sigma = (1 - sigma) x0 + sigma noise), as ComfyUI's
    ``*_RF`` samplers take it: (sigma_down, sigma_up, scale) such that ``scale * x_down + sigma_up *
    fresh noise`` is at sigma_to when x_down is at sigma_down. Adding noise alone (the VE step) would
    leave the signal at 1 - sigma_down: the scale brings it to 1 - sigma_to, and sigma_up tops the
    noise up to sigma_to, i.e. (scale * sigma_down)^2 + sigma_up^2 = sigma_to^2. eta 1 steps down to
    sigma_to^2 / sigma_from; eta 0 is the deterministic step."""
    if not eta or sigma_to == 0:
        return sigma_to, 0.0, 1.0
    sigma_down = max(sigma_to * (1 + (sigma_to / sigma_from - 1) * eta), 0.0)
    scale = (1 - sigma_to) / (1 - sigma_down)
    sigma_up = math.sqrt(max(sigma_to**2 - (scale * sigma_down) ** 2, 0.0))
    return sigma_down, sigma_up, scale


def _ancestral_step(sigma_from: float, sigma_to: float, eta: float, flow: bool) -> tuple[float, float, float]:
    """(sigma_down, sigma_up, scale) of the ancestral step for the model's kind (scale 1: VE)."""
    if flow:
        return get_ancestral_step_flow(sigma_from, sigma_to, eta)
    return (*get_ancestral_step(sigma_from, sigma_to, eta), 1.0)


def _renoise(x: torch.Tensor, noise, sigma_up: float, scale: float, s_noise: float) -> torch.Tensor:
    """The ancestral step's second half: rescale (flow models) and add fresh noise."""
    if scale != 1.0:
        x = x * scale
    if sigma_up > 0:
        x = x + noise(x) * (s_noise * sigma_up)
    return x


def _noise(noise: Noise) -> Callable[[torch.Tensor], torch.Tensor]:
    return noise if noise is not None else torch.randn_like


def _vp(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """The latent in the model's own scaling, x / sqrt(1 + sigma^2) (identity at sigma 0)."""
    return x / math.sqrt(1 + sigma**2)


# --- first and second order ODE samplers ---------------------------------------------------


@torch.no_grad()
def sample_euler(model, x, sigmas, callback: Callback = None, noise: Noise = None):
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i])
        x = x + to_d(x, s[i], denoised) * (s[i + 1] - s[i])
        if callback:
            callback(i, s[i], x, denoised)
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, callback: Callback = None, noise: Noise = None):
    """Karras et al. (2022) Algorithm 2 without churn: Heun steps, Euler for the last one to 0."""
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i])
        d = to_d(x, s[i], denoised)
        dt = s[i + 1] - s[i]
        if s[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, s[i + 1], model(x_2, sigmas[i + 1]))
            x = x + (d + d_2) / 2 * dt
        if callback:
            callback(i, s[i], x, denoised)
    return x


def _dpm2_step(model, x, sigmas, d, sigma, sigma_to):
    """DPM-Solver-2: the derivative at the log-midpoint, applied over the whole step."""
    sigma_mid = math.sqrt(sigma * sigma_to)
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, model(x_2, sigmas.new_tensor(sigma_mid)))
    return x + d_2 * (sigma_to - sigma)


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, callback: Callback = None, noise: Noise = None):
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i])
        d = to_d(x, s[i], denoised)
        if s[i + 1] == 0:
            x = x + d * (s[i + 1] - s[i])
        else:
            x = _dpm2_step(model, x, sigmas, d, s[i], s[i + 1])
        if callback:
            callback(i, s[i], x, denoised)
    return x


def _lms_coefficient(order: int, t: list[float], i: int, j: int) -> float:
    """Integral over [t_i, t_i+1] of the Lagrange basis polynomial through t_i, ..., t_i-order+1
    that is 1 at t_i-j. Gauss-Legendre with 4 nodes is exact for these (degree <= 3) polynomials."""
    nodes, weights = np.polynomial.legendre.leggauss(4)
    half, middle = (t[i + 1] - t[i]) / 2, (t[i + 1] + t[i]) / 2
    tau = middle + half * nodes
    basis = np.ones_like(tau)
    for k in range(order):
        if k != j:
            basis *= (tau - t[i - k]) / (t[i - j] - t[i - k])
    return float(half * np.dot(weights, basis))


@torch.no_grad()
def sample_lms(model, x, sigmas, callback: Callback = None, noise: Noise = None, order: int = 4):
    """Linear multistep (Adams-Bashforth in sigma) over the last ``order`` derivatives."""
    s = sigmas.tolist()
    ds = []
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i])
        ds.append(to_d(x, s[i], denoised))
        ds = ds[-order:]
        current = min(i + 1, order)
        coefficients = [_lms_coefficient(current, s, i, j) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(ds)))
        if callback:
            callback(i, s[i], x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, callback: Callback = None, noise: Noise = None):
    """DPM-Solver++(2M): second-order multistep in log-sigma, first order at the first and last step."""
    s = sigmas.tolist()
    old_denoised, h_last = None, None
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i])
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i] / s[i + 1])
            if old_denoised is None:
                blended = denoised
            else:
                r = h_last / h
                blended = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * blended
            h_last = h
        old_denoised = denoised
        if callback:
            callback(i, s[i], x, denoised)
    return x


# --- ancestral and SDE samplers ------------------------------------------------------------


@torch.no_grad()
def sample_euler_ancestral(
    model, x, sigmas, callback: Callback = None, noise: Noise = None, eta: float = 1.0, s_noise: float = 1.0, flow: bool = False
):
    """Euler steps to sigma_down, then fresh noise up to the next sigma; ``flow`` takes the
    rectified-flow step (ComfyUI's euler_ancestral_RF) for flow-matching models."""
    noise = _noise(noise)
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up, scale = _ancestral_step(s[i], s[i + 1], eta, flow)
        x = x + to_d(x, s[i], denoised) * (sigma_down - s[i])
        x = _renoise(x, noise, sigma_up, scale, s_noise)
        if callback:
            callback(i, s[i], x, denoised)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(
    model, x, sigmas, callback: Callback = None, noise: Noise = None, eta: float = 1.0, s_noise: float = 1.0, flow: bool = False
):
    """DPM2 steps to sigma_down, then fresh noise (``flow``: the rectified-flow step)."""
    noise = _noise(noise)
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up, scale = _ancestral_step(s[i], s[i + 1], eta, flow)
        d = to_d(x, s[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - s[i])
        else:
            x = _dpm2_step(model, x, sigmas, d, s[i], sigma_down)
        x = _renoise(x, noise, sigma_up, scale, s_noise)
        if callback:
            callback(i, s[i], x, denoised)
    return x


def _flow_log_snr_midpoint(sigma: float, sigma_to: float) -> float:
    """The sigma halfway in half-log-SNR log((1 - sigma) / sigma) between two flow sigmas (the
    solver's log-sigma midpoint in VE). At sigma 1 (log-SNR -inf) it is sigma itself."""
    return 1 / (1 + math.sqrt((1 - sigma) / sigma * (1 - sigma_to) / sigma_to))


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    model, x, sigmas, callback: Callback = None, noise: Noise = None, eta: float = 1.0, s_noise: float = 1.0, flow: bool = False
):
    """Ancestral sampling with DPM-Solver++(2S) steps: midpoint in log-sigma, or with ``flow`` in
    the flow's half-log-SNR with the rectified-flow noise step (ComfyUI's dpmpp_2s_ancestral_RF).
    The step x' = (s'/s) x + (1 - s'/s) denoised is exact for a constant denoised in both kinds."""
    noise = _noise(noise)
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up, scale = _ancestral_step(s[i], s[i + 1], eta, flow)
        if sigma_down == 0:
            x = x + to_d(x, s[i], denoised) * (sigma_down - s[i])
        else:
            sigma_mid = _flow_log_snr_midpoint(s[i], sigma_down) if flow else math.sqrt(s[i] * sigma_down)
            if sigma_mid < s[i]:
                ratio = sigma_mid / s[i]
                x_2 = ratio * x + (1 - ratio) * denoised
                denoised_2 = model(x_2, sigmas.new_tensor(sigma_mid))
            else:  # from flow's sigma 1 the midpoint is the start: a first-order step
                denoised_2 = denoised
            ratio = sigma_down / s[i]
            x = ratio * x + (1 - ratio) * denoised_2
        x = _renoise(x, noise, sigma_up, scale, s_noise)
        if callback:
            callback(i, s[i], x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    model, x, sigmas, callback: Callback = None, noise: Noise = None, eta: float = 1.0, s_noise: float = 1.0, r: float = 0.5
):
    """DPM-Solver++ (stochastic, 2 model calls a step). The two noises of a step are Brownian
    increments over [sigma_i, sigma_mid] and [sigma_i, sigma_i+1], built from two independent
    draws (see the module docstring)."""
    noise = _noise(noise)
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i])
        if s[i + 1] == 0:
            x = x + to_d(x, s[i], denoised) * (s[i + 1] - s[i])
        else:
            h = math.log(s[i] / s[i + 1])
            sigma_mid = s[i] * math.exp(-r * h)
            fac = 1 / (2 * r)
            # Step 1: to the intermediate noise level.
            sigma_down, sigma_up = get_ancestral_step(s[i], sigma_mid, eta)
            ratio = sigma_down / s[i]
            x_2 = ratio * x + (1 - ratio) * denoised
            z_1 = noise(x) if sigma_up > 0 else None
            if z_1 is not None:
                x_2 = x_2 + z_1 * (s_noise * sigma_up)
            denoised_2 = model(x_2, sigmas.new_tensor(sigma_mid))
            # Step 2: the whole step with the blended estimate.
            sigma_down, sigma_up = get_ancestral_step(s[i], s[i + 1], eta)
            ratio = sigma_down / s[i]
            x = ratio * x + (1 - ratio) * ((1 - fac) * denoised + fac * denoised_2)
            if sigma_up > 0:
                z_2 = noise(x)
                if z_1 is None:
                    z = z_2
                else:
                    first, second = s[i] - sigma_mid, sigma_mid - s[i + 1]
                    z = (math.sqrt(first) * z_1 + math.sqrt(second) * z_2) / math.sqrt(first + second)
                x = x + z * (s_noise * sigma_up)
        if callback:
            callback(i, s[i], x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(
    model,
    x,
    sigmas,
    callback: Callback = None,
    noise: Noise = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
):
    """DPM-Solver++(2M) SDE; A1111's "DPM++ 2M SDE" uses the midpoint solver."""
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    noise = _noise(noise)
    s = sigmas.tolist()
    old_denoised, h_last = None, None
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i])
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i] / s[i + 1])
            eta_h = eta * h
            weight = -math.expm1(-h - eta_h)
            x = (s[i + 1] / s[i] * math.exp(-eta_h)) * x + weight * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + (weight / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * weight * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise(x) * (s[i + 1] * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
            h_last = h
        old_denoised = denoised
        if callback:
            callback(i, s[i], x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, callback: Callback = None, noise: Noise = None, eta: float = 1.0, s_noise: float = 1.0):
    """DPM-Solver++(3M) SDE."""
    noise = _noise(noise)
    s = sigmas.tolist()
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i])
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i] / s[i + 1])
            h_eta = h * (eta + 1)
            x = math.exp(-h_eta) * x - math.expm1(-h_eta) * denoised
            phi_2 = math.expm1(-h_eta) / h_eta + 1
            if h_2 is not None:
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                x = x + phi_2 * (denoised - denoised_1) / (h_1 / h)
            if eta:
                x = x + noise(x) * (s[i + 1] * math.sqrt(-math.expm1(-2 * h * eta)) * s_noise)
            h_1, h_2 = h, h_1
        denoised_1, denoised_2 = denoised, denoised_1
        if callback:
            callback(i, s[i], x, denoised)
    return x


# --- DDIM-type samplers (DDPM-scaled start, model-scaled result) ------------------------------


@torch.no_grad()
def sample_ddim(model, x, sigmas, callback: Callback = None, noise: Noise = None, eta: float = 0.0):
    """DDIM. In sigma space a DDIM step is an Euler step to sigma_down plus sigma_up of fresh
    noise, with DDIM's eta playing the ancestral eta (eta 0: deterministic DDIM). It ends at
    timestep 0's small sigma rather than 0 and returns the latent in the model's own scaling, as
    CompVis DDIM does."""
    noise = _noise(noise)
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i])
        sigma_down, sigma_up = get_ancestral_step(s[i], s[i + 1], eta)
        x = x + to_d(x, s[i], denoised) * (sigma_down - s[i])
        if sigma_up > 0:
            x = x + noise(x) * sigma_up
        if callback:
            callback(i, s[i], x, denoised)
    return _vp(x, s[-1])


@torch.no_grad()
def sample_plms(model, x, sigmas, callback: Callback = None, noise: Noise = None):
    """CompVis PLMS (pseudo linear multistep): Adams-Bashforth on the predicted noise, with a
    pseudo improved Euler (two model calls) for the first step. A DDIM step in sigma space is an
    Euler step whose derivative is the predicted noise."""
    s = sigmas.tolist()
    old_eps = []
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i])
        eps = to_d(x, s[i], denoised)
        dt = s[i + 1] - s[i]
        if not old_eps:
            if s[i + 1] == 0:
                eps_prime = eps
            else:
                x_next = x + eps * dt
                eps_prime = (eps + to_d(x_next, s[i + 1], model(x_next, sigmas[i + 1]))) / 2
        elif len(old_eps) == 1:
            eps_prime = (3 * eps - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            eps_prime = (23 * eps - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            eps_prime = (55 * eps - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x = x + eps_prime * dt
        old_eps = (old_eps + [eps])[-3:]
        if callback:
            callback(i, s[i], x, denoised)
    return _vp(x, s[-1])


def _unipc_update(model, x, sigmas, history, sigma_s, sigma_t, order, variant, use_corrector):
    """One UniPC step (data prediction, B(h) variants) from sigma_s to sigma_t: the UniP predictor,
    then, with ``use_corrector``, one model call at the prediction and the UniC corrector. The
    variance-preserving formulas divided by alpha_t: x_t = sigma_t/sigma_s x - h phi_1 m0 - B(h) ..."""
    lambda_s, m0 = history[-1]
    h = math.log(sigma_s / sigma_t)
    rks, d1s = [], []
    for k in range(1, order):
        lambda_k, m_k = history[-(k + 1)]
        rk = (lambda_k - lambda_s) / h
        rks.append(rk)
        d1s.append((m_k - m0) / rk)
    rks.append(1.0)

    hh = -h
    h_phi_1 = math.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    factorial = 1
    b_h = hh if variant == "bh1" else math.expm1(hh)
    rows, b = [], []
    for k in range(1, order + 1):
        rows.append([rk ** (k - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R = np.array(rows)

    x_t_ = (sigma_t / sigma_s) * x - h_phi_1 * m0
    if d1s:
        rhos_p = [0.5] if order == 2 else np.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        x_t = x_t_ - b_h * sum(rho * d for rho, d in zip(rhos_p, d1s))
    else:
        x_t = x_t_
    if not use_corrector:
        return x_t, None
    m_t = model(x_t, sigmas.new_tensor(sigma_t))
    rhos_c = [0.5] if order == 1 else np.linalg.solve(R, b).tolist()
    correction = rhos_c[-1] * (m_t - m0)
    for rho, d in zip(rhos_c[:-1], d1s):
        correction = correction + rho * d
    return x_t_ - b_h * correction, m_t


@torch.no_grad()
def sample_unipc(
    model,
    x,
    sigmas,
    callback: Callback = None,
    noise: Noise = None,
    order: int = 3,
    variant: str = "bh1",
    lower_order_final: bool = True,
):
    """UniPC (Zhao et al. 2023), multistep with corrector, as A1111 runs it: ``steps`` model
    calls, the order warming up from 1 and, with ``lower_order_final``, coming down over the last
    steps; no corrector after the last step. A last step to sigma 0 is the first-order update's
    limit, the denoised estimate. Returns the latent in the model's own scaling (DDIM-type)."""
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    s = sigmas.tolist()
    steps = len(s) - 1
    if steps < 1:
        return _vp(x, s[-1])
    history = [(-math.log(s[0]), model(x, sigmas[0]))]
    for i in range(steps):
        step_order = min(order, i + 1, steps - i) if lower_order_final else min(order, i + 1)
        denoised = history[-1][1]
        last = i == steps - 1
        if s[i + 1] == 0:
            x, m_t = denoised, None
        else:
            x, m_t = _unipc_update(model, x, sigmas, history, s[i], s[i + 1], step_order, variant, not last)
        if callback:
            callback(i, s[i], x, denoised)
        if not last:
            if m_t is None:
                m_t = model(x, sigmas[i + 1])
            history = (history + [(-math.log(s[i + 1]), m_t)])[-order:]
    return _vp(x, s[-1])


# --- LCM and Restart -----------------------------------------------------------------------


def _find_schedule(model):
    for owner in (model, getattr(model, "denoiser", None)):
        schedule = getattr(owner, "schedule", None)
        if isinstance(schedule, schedules.DiscreteSchedule):
            return schedule
    return None


@torch.no_grad()
def sample_lcm(
    model,
    x,
    sigmas,
    callback: Callback = None,
    noise: Noise = None,
    schedule: schedules.DiscreteSchedule | None = None,
    timestep_scaling: float = 10.0,
    sigma_data: float = 0.5,
):
    """Latent Consistency Model sampling: jump to the consistency estimate, then re-noise to the
    next sigma with fresh noise (none after the last step)."""
    noise = _noise(noise)
    schedule = schedule if schedule is not None else _find_schedule(model)
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = model(x, sigmas[i])
        if schedule is not None:
            t = float(schedule.sigma_to_t(torch.tensor([s[i]], dtype=torch.float64))[0]) * timestep_scaling
            c_skip = sigma_data**2 / (t**2 + sigma_data**2)
            c_out = t / math.sqrt(t**2 + sigma_data**2)
            denoised = c_out * denoised + c_skip * _vp(x, s[i])
        x = denoised
        if s[i + 1] > 0:
            x = x + noise(x) * s[i + 1]
        if callback:
            callback(i, s[i], x, denoised)
    return x


@torch.no_grad()
def sample_restart(
    model, x, sigmas, callback: Callback = None, noise: Noise = None, s_noise: float = 1.0, restart_list: dict | None = None
):
    """Restart sampling (Xu et al. 2023) as A1111 runs it: Heun steps, and at sigma ~0.1 jump back
    up to sigma ~2 with fresh noise and redo that stretch. From 20 steps on, the main schedule is
    rebuilt as Karras over the steps the restarts leave; ``restart_list`` is
    {sigma: [restart_steps, restart_times, restart_max_sigma]}. The callback runs once per Heun
    step, restart segments included (for A1111's automatic list that is ``steps`` times)."""
    noise = _noise(noise)
    steps = len(sigmas) - 1
    if restart_list is None:
        restart_list = {}
        if steps >= 20:
            restart_steps, restart_times = 9, 1
            if steps >= 36:
                restart_steps, restart_times = steps // 4, 2
            main = schedules.karras_sequence(steps - restart_steps * restart_times, float(sigmas[-2]), float(sigmas[0]))
            sigmas = schedules.append_zero(main.float()).to(sigmas.device, sigmas.dtype)
            restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    s = sigmas.tolist()

    def nearest(value):
        return int(torch.argmin((sigmas - value).abs()))

    at_index = {nearest(key): value for key, value in restart_list.items()}
    step_list = []
    for i in range(len(s) - 1):
        step_list.append((s[i], s[i + 1]))
        if i + 1 in at_index:
            restart_steps, restart_times, restart_max = at_index[i + 1]
            min_index, max_index = i + 1, nearest(restart_max)
            if max_index < min_index:
                restart = schedules.karras_sequence(restart_steps, s[min_index], s[max_index]).tolist()
                for _ in range(restart_times):
                    step_list.extend(zip(restart[:-1], restart[1:]))

    last_sigma = None
    for k, (sigma, sigma_next) in enumerate(step_list):
        if last_sigma is not None and last_sigma < sigma:
            x = x + noise(x) * (s_noise * math.sqrt(sigma**2 - last_sigma**2))
        denoised = model(x, sigmas.new_tensor(sigma))
        d = to_d(x, sigma, denoised)
        dt = sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, model(x_2, sigmas.new_tensor(sigma_next)))
            x = x + (d + d_2) / 2 * dt
        if callback:
            callback(k, sigma, x, denoised)
        last_sigma = sigma_next
    return x


# --- registry ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampler:
    name: str
    function: Callable
    sigmas: Callable  # (DiscreteSchedule, steps) -> sigmas: what "Automatic" means for this sampler
    # Whether the first latent is DDPM-scaled noise (x_T ~ N(0, 1 + sigma^2)) rather than sigma * noise.
    ddpm_initial_noise: bool = False
    # The schedule type "Automatic" stands for; None: the sampler's own discrete timesteps.
    default_schedule: str | None = "Uniform"
    # A1111's discard_next_to_last_sigma: one more sigma is computed and the penultimate dropped.
    discard_penultimate_sigma: bool = False
    aliases: tuple[str, ...] = ()
    # A1111's default options (eta, s_noise, ...), applied by ``sample``; read-only.
    defaults: dict = field(default_factory=dict, hash=False, compare=False)
    # Whether it is valid on flow-matching models (SD3, FLUX): the ODE solvers in sigma, and the
    # ancestral ones that take ``flow`` (see core.sampling.flow.flow_sampler).
    flow_ok: bool = False

    def __post_init__(self):
        object.__setattr__(self, "defaults", MappingProxyType(dict(self.defaults)))

    def initial_latent(self, noise: torch.Tensor, sigmas: torch.Tensor, schedule=None) -> torch.Tensor:
        """The first latent: DDPM-scaled noise for DDIM-type samplers, else pure noise at
        sigmas[0] as the schedule's kind makes it (sigma * noise without a schedule)."""
        if self.ddpm_initial_noise:
            return noise * (1 + sigmas[0] ** 2) ** 0.5
        if schedule is not None:
            return schedule.initial_latent(noise, sigmas[0])
        return noise * sigmas[0]

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options the function takes besides callback and noise."""
        skip = {"model", "x", "sigmas", "callback", "noise"}
        return tuple(p for p in inspect.signature(self.function).parameters if p not in skip)

    def sample(self, model, x, sigmas, callback: Callback = None, noise: Noise = None, **options):
        """Run with A1111's defaults, overridden by ``options``; options this sampler does not take
        (eta for Euler, schedule for all but LCM) are ignored, as A1111 does."""
        accepted = set(self.options)
        kwargs = {**self.defaults, **{k: v for k, v in options.items() if k in accepted}}
        return self.function(model, x, sigmas, callback=callback, noise=noise, **kwargs)


def _k(name, function, schedule="Uniform", discard=False, aliases=(), flow_ok=False, **defaults) -> Sampler:
    """A k-diffusion-style sampler whose "Automatic" is one of the schedule types."""
    sigmas = partial(schedules.compute_sigmas, schedule, discard_penultimate=discard)
    return Sampler(name, function, sigmas, False, schedule, discard, tuple(aliases), defaults, flow_ok=flow_ok)


_STOCHASTIC = {"eta": 1.0, "s_noise": 1.0}

SAMPLERS = {
    s.name: s
    for s in (
        _k("Euler", sample_euler, aliases=("k_euler",), flow_ok=True),
        _k("Euler a", sample_euler_ancestral, aliases=("k_euler_a", "k_euler_ancestral"), flow_ok=True, **_STOCHASTIC),
        _k("Heun", sample_heun, aliases=("k_heun",), flow_ok=True),
        _k("DPM2", sample_dpm_2, "Karras", discard=True, aliases=("k_dpm_2",), flow_ok=True),
        _k("DPM2 a", sample_dpm_2_ancestral, "Karras", discard=True, aliases=("k_dpm_2_a",), flow_ok=True, **_STOCHASTIC),
        _k("DPM++ 2S a", sample_dpmpp_2s_ancestral, "Karras", aliases=("k_dpmpp_2s_a",), flow_ok=True, **_STOCHASTIC),
        _k("DPM++ 2M", sample_dpmpp_2m, "Karras", aliases=("k_dpmpp_2m",), flow_ok=True),
        _k("DPM++ SDE", sample_dpmpp_sde, "Karras", aliases=("k_dpmpp_sde",), **_STOCHASTIC),
        _k("DPM++ 2M SDE", sample_dpmpp_2m_sde, "Exponential", aliases=("k_dpmpp_2m_sde",), **_STOCHASTIC, solver_type="midpoint"),
        _k("DPM++ 3M SDE", sample_dpmpp_3m_sde, "Exponential", discard=True, aliases=("k_dpmpp_3m_sde",), **_STOCHASTIC),
        _k("LMS", sample_lms, aliases=("k_lms",), flow_ok=True),
        Sampler("DDIM", sample_ddim, schedules.ddim_sigmas, True, None, aliases=("ddim",), defaults={"eta": 0.0}),
        Sampler("PLMS", sample_plms, schedules.ddim_sigmas, True, None, aliases=("plms",)),
        Sampler("UniPC", sample_unipc, schedules.unipc_sigmas, True, None, aliases=("unipc",)),
        Sampler("LCM", sample_lcm, schedules.lcm_sigmas, False, None, aliases=("k_lcm", "lcm")),
        _k("Restart", sample_restart, "Karras", aliases=("restart",), s_noise=1.0),
    )
}

# Lower-cased names and A1111's API aliases -> sampler name.
_SAMPLER_KEYS = {key.lower(): s.name for s in SAMPLERS.values() for key in (s.name, *s.aliases)}
# Suffixes of A1111's old per-schedule aliases (k_dpmpp_2m_ka, k_dpmpp_2m_sde_exp, ...).
_ALIAS_SUFFIXES = {"_ka": "Karras", "_exp": "Exponential"}


def get_sampler(name: str) -> Sampler:
    """The Sampler for a name A1111 would accept; a schedule in the name is ignored here (see
    resolve_sampler_name)."""
    return SAMPLERS[resolve_sampler_name(name)[0]]


def resolve_sampler_name(name: str) -> tuple[str, str]:
    """(sampler name, schedule type) from any name A1111 accepts, case-insensitively: current names
    ("DPM++ 2M"), old combined ones ("DPM++ 2M Karras", "DPM++ 2M SDE Exponential") and API aliases
    ("k_euler_a", "k_dpmpp_2m", "k_dpmpp_2m_ka"). Without a schedule in the name the schedule is
    "Automatic"; a named one is returned as named, even when it is the sampler's default."""
    key = " ".join(str(name).split()).lower()
    if key in _SAMPLER_KEYS:
        return _SAMPLER_KEYS[key], schedules.AUTOMATIC
    for suffix, schedule in _ALIAS_SUFFIXES.items():
        if key.endswith(suffix) and key[: -len(suffix)] in _SAMPLER_KEYS:
            return _SAMPLER_KEYS[key[: -len(suffix)]], schedule
    # "<sampler> <schedule type>", longest schedule spelling first ("SGM Uniform" before "Uniform").
    for spelling in sorted(schedules.SCHEDULE_SPELLINGS, key=len, reverse=True):
        label = schedules.SCHEDULE_SPELLINGS[spelling]
        suffix = " " + spelling
        if label != schedules.AUTOMATIC and key.endswith(suffix) and key[: -len(suffix)] in _SAMPLER_KEYS:
            return _SAMPLER_KEYS[key[: -len(suffix)]], label
    raise EngineError(f"unknown {name!r} (known: {', '.join(SAMPLERS)})", "sampler", NOT_FOUND)
