"""SD 3.x and FLUX.1 end to end: tiny checkpoints in the real layouts (tests/tiny_flow_models.py)
loaded by our loader (single file and diffusers folder), sampled and decoded by our pipelines, against
diffusers' StableDiffusion3Pipeline and FluxPipeline (the test-only oracle) on the same weights:
Euler latents within 1e-4, pixels within 1/255. The parity runs are in float64 on both sides: the
tiny random networks magnify float32 rounding (latents of magnitude ~30 differ by ~0.3 in float32),
while in float64 what is left is diffusers' float32 sigmas (~1e-5)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from core.conditioning import make_conditioner
from core.errors import EngineError
from core.loading import load_model, read_spec
from core.params import GenerationParams
from core.pipelines.common import decode_latents
from core.pipelines.sampling_run import sample_latents
from core.text.tokenizer import load_clip_tokenizer
from tiny_flow_models import (
    SD3_SCHEDULER, flux_scheduler, flux_components, save_flow_folder, save_single_file, sd3_components, t5_tokenizer,
)

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT, NEGATIVE = "a photo of the red cat on the mat", "a dog"
SIZE = (64, 48)  # width, height: not square, so rows and columns cannot be swapped unnoticed


@pytest.fixture(scope="module")
def sd3(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd3")
    parts = sd3_components(0)
    folder = save_flow_folder(root / "tiny-sd3-diffusers", parts, "StableDiffusion3Pipeline", SD3_SCHEDULER)
    single = save_single_file(folder, root / "single" / "tiny-sd3.safetensors")
    return dict(parts={name: module.double() for name, module in parts.items()}, folder=folder, single=single)


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    root = tmp_path_factory.mktemp("flux")
    made = {}
    for kind, dev in (("dev", True), ("schnell", False)):
        parts = flux_components(0, dev=dev)
        folder = save_flow_folder(root / f"tiny-flux-{kind}-diffusers", parts, "FluxPipeline", flux_scheduler(kind))
        single = save_single_file(folder, root / kind / f"tiny-flux-{kind}.safetensors")
        made[kind] = dict(parts={name: module.double() for name, module in parts.items()}, folder=folder, single=single)
    return made


def noise(seed: int, width: int, height: int) -> torch.Tensor:
    return torch.randn(1, 16, height // 8, width // 8, generator=torch.Generator().manual_seed(seed)).double()


def ours(path, params: GenerationParams, seed: int):
    model = load_model(path, dtype=torch.float64)
    latents = sample_latents(model, make_conditioner(model, load_clip_tokenizer()), params, [seed])
    return model, latents


def diffusers_sd3(made: dict, steps: int, cfg: float, seed: int, output_type: str):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    parts = made["parts"]
    pipe = StableDiffusion3Pipeline(
        transformer=parts["transformer"], scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=parts["vae"],
        text_encoder=parts["text_encoder"], tokenizer=load_clip_tokenizer().hf,
        text_encoder_2=parts["text_encoder_2"], tokenizer_2=load_clip_tokenizer(pad_with_eos=False).hf,
        text_encoder_3=parts["text_encoder_3"], tokenizer_3=t5_tokenizer(made["folder"] / "tokenizer_3"),
    )
    pipe.set_progress_bar_config(disable=True)
    width, height = SIZE
    return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=cfg, width=width,
                height=height, latents=noise(seed, width, height), output_type=output_type).images


def diffusers_flux(made: dict, steps: int, guidance: float, seed: int, output_type: str, max_sequence_length: int):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    parts = made["parts"]
    kind = "dev" if parts["transformer"].config.guidance_embeds else "schnell"
    config = flux_scheduler(kind)
    scheduler = FlowMatchEulerDiscreteScheduler(**{k: v for k, v in config.items() if not k.startswith("_")})
    pipe = FluxPipeline(
        transformer=parts["transformer"], scheduler=scheduler, vae=parts["vae"], text_encoder=parts["text_encoder"],
        tokenizer=load_clip_tokenizer().hf, text_encoder_2=parts["text_encoder_2"],
        tokenizer_2=t5_tokenizer(made["folder"] / "tokenizer_2"),
    )
    pipe.set_progress_bar_config(disable=True)
    width, height = SIZE
    packed = FluxPipeline._pack_latents(noise(seed, width, height), 1, 16, height // 8, width // 8)
    out = pipe(prompt=PROMPT, num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
               latents=packed, output_type=output_type, max_sequence_length=max_sequence_length).images
    if output_type == "latent":
        out = FluxPipeline._unpack_latents(out, height, width, 8)
    return out


def assert_latents_match(ours_latents: torch.Tensor, reference: torch.Tensor) -> None:
    """Within 1e-4; on latents beyond 100 in magnitude (random weights) within 1e-6 of it: what
    diffusers' float32 sigmas leave in a float64 run."""
    assert ours_latents.abs().mean() > 0.1
    scale = max(1.0, float(ours_latents.abs().max()) / 100)
    assert (ours_latents - reference).abs().max() < 1e-4 * scale


def params(**changes) -> GenerationParams:
    width, height = SIZE
    return GenerationParams(prompt=PROMPT, width=width, height=height, sampler="Euler", **changes)


def assert_pixels_match(model, latents, reference: np.ndarray) -> None:
    pictures = decode_latents(model.vae, latents).permute(0, 2, 3, 1).numpy()
    assert pictures.std() > 0.02  # a picture, not a flat field
    assert np.abs(pictures - reference).max() <= 1 / 255


def test_sd3_latents_and_pixels_match_diffusers(sd3):
    model, latents = ours(sd3["single"], params(negative_prompt=NEGATIVE, steps=4, cfg_scale=5.0, scheduler="Normal"), 7)
    assert model.spec.family == "sd3" and model.t5_tokenizer is not None
    reference = diffusers_sd3(sd3, 4, 5.0, 7, "latent")
    assert_latents_match(latents, reference)
    assert_pixels_match(model, latents, diffusers_sd3(sd3, 4, 5.0, 7, "np"))


@pytest.mark.parametrize("kind", ["dev", "schnell"])
def test_flux_latents_and_pixels_match_diffusers(flux, kind):
    made = flux[kind]
    tokens = 512 if kind == "dev" else 256  # the families' T5 lengths: diffusers' defaults for each
    model, latents = ours(made["single"], params(steps=3, cfg_scale=1.0, distilled_cfg_scale=3.5, scheduler="Simple"), 11)
    assert model.spec.family == f"flux-{kind}"
    reference = diffusers_flux(made, 3, 3.5, 11, "latent", tokens)
    assert_latents_match(latents, reference)
    assert_pixels_match(model, latents, diffusers_flux(made, 3, 3.5, 11, "np", tokens))


def test_flux_dev_follows_its_distilled_guidance_and_schnell_ignores_it(flux):
    for kind, should_change in (("dev", True), ("schnell", False)):
        model = load_model(flux[kind]["single"], dtype=torch.float64)
        conditioner = make_conditioner(model, load_clip_tokenizer())
        a, b = (sample_latents(model, conditioner, params(steps=2, cfg_scale=1.0, distilled_cfg_scale=g), [3]) for g in (1.0, 6.0))
        assert bool((a - b).abs().max() > 1e-3) == should_change


def test_diffusers_folder_and_single_file_give_the_same_picture(sd3):
    run = params(negative_prompt=NEGATIVE, steps=2, cfg_scale=4.0)
    _, from_file = ours(sd3["single"], run, 5)
    _, from_folder = ours(sd3["folder"], run, 5)
    assert torch.allclose(from_file, from_folder, atol=1e-6)


def test_sd3_without_t5_takes_zeros_in_its_place_as_diffusers(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    parts = sd3_components(1, with_t5=False)
    folder = save_flow_folder(tmp_path / "no-t5", parts, "StableDiffusion3Pipeline", SD3_SCHEDULER)
    single = save_single_file(folder, tmp_path / "single" / "sd3-no-t5.safetensors")
    parts = {name: module.double() for name, module in parts.items()}
    model, latents = ours(single, params(negative_prompt=NEGATIVE, steps=3, cfg_scale=5.0, scheduler="Normal"), 2)
    assert "t5xxl" not in model.text_encoders
    pipe = StableDiffusion3Pipeline(
        transformer=parts["transformer"], scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=parts["vae"],
        text_encoder=parts["text_encoder"], tokenizer=load_clip_tokenizer().hf, text_encoder_2=parts["text_encoder_2"],
        tokenizer_2=load_clip_tokenizer(pad_with_eos=False).hf, text_encoder_3=None, tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    width, height = SIZE
    reference = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=3, guidance_scale=5.0, width=width,
                     height=height, latents=noise(2, width, height), output_type="latent").images
    assert_latents_match(latents, reference)


def test_files_without_encoders_take_them_from_the_text_encoder_folder(flux, tmp_path):
    """A transformer-only FLUX file (BFL's own layout: bare keys) with its VAE and encoders as
    separate files, as ComfyUI and Forge keep them; the same picture as the bundled file."""
    from safetensors.torch import load_file, save_file

    bundled = load_file(flux["dev"]["single"])
    transformer_only = {k[len("model.diffusion_model."):]: v for k, v in bundled.items() if k.startswith("model.diffusion_model.")}
    (tmp_path / "ckpt").mkdir()
    save_file(transformer_only, tmp_path / "ckpt" / "flux1-dev.safetensors")
    encoders, vaes = tmp_path / "text_encoder", tmp_path / "VAE"
    encoders.mkdir(), vaes.mkdir()
    for name, prefix in (("clip_l", "text_encoders.clip_l.transformer."), ("t5xxl_fp16", "text_encoders.t5xxl.transformer.")):
        save_file({k[len(prefix):]: v for k, v in bundled.items() if k.startswith(prefix)}, encoders / f"{name}.safetensors")
    save_file({k[len("first_stage_model."):]: v for k, v in bundled.items() if k.startswith("first_stage_model.")},
              vaes / "ae.safetensors")
    with pytest.raises(EngineError, match="no text encoders or VAE: put clip_l and t5xxl in models/text_encoder; put "
                                          "the FLUX.1 dev VAE in models/VAE"):
        read_spec(tmp_path / "ckpt" / "flux1-dev.safetensors")
    import shutil

    shutil.copy(flux["dev"]["single"].parent / "tokenizer.json", encoders / "tokenizer.json")
    run = params(steps=2, cfg_scale=1.0)
    model = load_model(tmp_path / "ckpt" / "flux1-dev.safetensors", parts_folders=(encoders, vaes), dtype=torch.float64)
    separate = sample_latents(model, make_conditioner(model, load_clip_tokenizer()), run, [4])
    _, whole = ours(flux["dev"]["single"], run, 4)
    assert torch.equal(separate, whole)


def test_a_t5_encoder_without_its_tokenizer_is_refused_by_name(sd3, tmp_path):
    import shutil

    shutil.copy(sd3["single"], tmp_path / "lonely-sd3.safetensors")
    with pytest.raises(EngineError, match="T5 tokenizer.*tokenizer.json"):
        load_model(tmp_path / "lonely-sd3.safetensors")


def test_samplers_made_for_variance_exploding_noise_are_refused_on_flow_models(sd3):
    model = load_model(sd3["single"])
    conditioner = make_conditioner(model, load_clip_tokenizer())
    with pytest.raises(EngineError, match="DPM\\+\\+ SDE is not for flow-matching"):
        sample_latents(model, conditioner, dataclasses.replace(params(steps=2), sampler="DPM++ SDE"), [1])
