"""diffusers as the test-only oracle of the parity tests: the scheduler, and the pipeline
arguments, that make a diffusers pipeline take the steps our "Euler" or "DDIM" takes."""
from __future__ import annotations

import inspect

import torch

from core.sampling.schedules import DiscreteSchedule, automatic_sigmas

# SD's "scaled linear" training schedule, in diffusers' terms.
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def oracle_scheduler(sampler: str, steps: int, alphas_cumprod: torch.Tensor, **config) -> tuple[object, dict]:
    """(scheduler, the pipeline's step arguments) for ``sampler``, "Euler" or "DDIM", over
    ``steps`` steps; ``config`` goes to the scheduler as well (e.g. ``prediction_type``)."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    if sampler == "Euler":
        scheduler = EulerDiscreteScheduler(**BETAS, timestep_spacing="linspace", **config)
        # A1111's "Automatic" sigmas interpolate the schedule in log-sigma; diffusers' Euler
        # interpolates linearly (1e-5 apart, see test_parity's
        # test_schedule_close_to_diffusers_linspace), so the oracle is handed the same sigmas.
        return scheduler, {"sigmas": automatic_sigmas(DiscreteSchedule(alphas_cumprod), steps).tolist()}
    scheduler = DDIMScheduler(**BETAS, steps_offset=1, timestep_spacing="leading", set_alpha_to_one=False,
                              clip_sample=False, **config)
    return scheduler, {"num_inference_steps": steps}


def diffusers_converter(hidden_size: int):
    """diffusers' convert_flux_transformer_checkpoint_to_diffusers. It hard-codes FLUX.1's width
    (``inner_dim = 3072``) for splitting the single blocks' fused linear1, so for a narrow model
    the one constant is set to its width; the full-size layout tests use it unchanged."""
    from diffusers.loaders import single_file_utils

    original = single_file_utils.convert_flux_transformer_checkpoint_to_diffusers
    if hidden_size == 3072:
        return original
    source = inspect.getsource(original)
    assert source.count("inner_dim = 3072") == 1
    namespace = dict(vars(single_file_utils))
    exec(compile(source.replace("inner_dim = 3072", f"inner_dim = {hidden_size}"), single_file_utils.__file__, "exec"), namespace)
    return namespace[original.__name__]
