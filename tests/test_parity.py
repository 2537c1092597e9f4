"""Our UNet, VAE, text encoder and whole txt2img runs against diffusers (the test-only oracle),
on identical random weights."""
import pytest
import torch

import tiny_models
from diffusers_oracle import BETAS, oracle_scheduler
from core.loading import load_model
from core.params import GenerationParams
from core.pipelines.common import decode_latents
from core.pipelines.sampling_run import sample_latents
from core.sampling.schedules import DiscreteSchedule, automatic_sigmas
from core.conditioning import TextConditioner
from core.text.tokenizer import load_clip_tokenizer

PROMPT, NEGATIVE = "a red circle at the top left, masterpiece", "blurry, low quality"


@pytest.fixture(scope="module")
def models(tiny_checkpoints):
    ours = load_model(tiny_checkpoints["safetensors"])
    theirs = tiny_models.diffusers_components(0)
    return ours, theirs


def test_unet_forward_matches(models):
    ours, (unet, _, _) = models
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 16, 24, generator=generator)
    t = torch.tensor([10.0, 500.5])
    context = torch.randn(2, 77, tiny_models.TEXT_HIDDEN, generator=generator)
    with torch.no_grad():
        a = ours.unet(x, t, context)
        b = unet(x, t, encoder_hidden_states=context).sample
    assert a.abs().mean() > 0.1  # the comparison is not between two near-zero tensors
    assert (a - b).abs().max() < 1e-4


def test_vae_encode_decode_match(models):
    ours, (_, vae, _) = models
    generator = torch.Generator().manual_seed(2)
    image = torch.rand(1, 3, 64, 48, generator=generator) * 2 - 1
    latent = torch.randn(1, 4, 8, 6, generator=generator)
    with torch.no_grad():
        mean_ours = ours.vae.encode(image)
        mean_theirs = vae.encode(image).latent_dist.mean * 0.18215
        decoded_ours = ours.vae.decode(latent)
        decoded_theirs = vae.decode(latent / 0.18215).sample
    assert (mean_ours - mean_theirs).abs().max() < 1e-4
    assert (decoded_ours - decoded_theirs).abs().max() < 1e-4
    assert decoded_ours.abs().mean() > 0.1


@pytest.mark.parametrize("clip_skip", [1, 2])
def test_text_encoding_matches(models, clip_skip):
    ours, (_, _, text) = models
    tokenizer = load_clip_tokenizer()
    ids = torch.tensor([tokenizer.encode_padded(PROMPT), tokenizer.encode_padded("")])
    with torch.no_grad():
        a = ours.text_encoder(ids, clip_skip=clip_skip)
        out = text(ids, output_hidden_states=True)
        b = out.last_hidden_state if clip_skip == 1 else text.final_layer_norm(out.hidden_states[-clip_skip])
    assert (a - b).abs().max() < 1e-5


def diffusers_txt2img(components, sampler, steps, seeds, width, height, output_type, alphas_cumprod):
    from diffusers import StableDiffusionPipeline

    unet, vae, text = components
    scheduler, extra = oracle_scheduler(sampler, steps, alphas_cumprod)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=load_clip_tokenizer().hf, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    dtype = unet.dtype
    latents = torch.stack([torch.randn(4, height // 8, width // 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return pipe(
        prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=7.0, width=width, height=height,
        latents=latents.to(dtype), num_images_per_prompt=len(seeds), output_type=output_type, **extra,
    ).images


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_txt2img_latents_match_diffusers(tiny_checkpoints, sampler):
    """float64 on both sides: the algorithms agree to 1e-4 (in float32, rounding alone reaches
    1e-4 on latents of magnitude 14 that a random model leaves behind)."""
    ours = load_model(tiny_checkpoints["safetensors"], dtype=torch.float64)
    theirs = tuple(c.double() for c in tiny_models.diffusers_components(0))
    params = GenerationParams(prompt=PROMPT, negative_prompt=NEGATIVE, steps=12, cfg_scale=7.0, width=64, height=48, sampler=sampler)
    a = sample_latents(ours, TextConditioner(ours.text_encoder, load_clip_tokenizer()), params, [3, 4])
    b = diffusers_txt2img(theirs, sampler, 12, [3, 4], 64, 48, "latent", ours.alphas_cumprod)
    assert a.dtype == torch.float64
    assert (a - b).abs().max() < 1e-4


@pytest.mark.parametrize("sampler", ["Euler", "DDIM"])
def test_txt2img_pixels_match_diffusers_in_float32(models, sampler):
    ours, theirs = models
    params = GenerationParams(prompt=PROMPT, negative_prompt=NEGATIVE, steps=10, cfg_scale=7.0, width=64, height=64, sampler=sampler)
    latents = sample_latents(ours, TextConditioner(ours.text_encoder, load_clip_tokenizer()), params, [7])
    pixels = decode_latents(ours.vae, latents)
    reference = diffusers_txt2img(theirs, sampler, 10, [7], 64, 64, "pt", ours.alphas_cumprod)
    ours_255 = (pixels * 255).round()
    theirs_255 = (reference.clamp(0, 1) * 255).round()
    assert (ours_255 - theirs_255).abs().max() <= 1
    assert pixels.std() > 0.01  # a real picture, not a flat one


def test_schedule_close_to_diffusers_linspace(models):
    """Our log-sigma interpolation against diffusers' linear one: the same up to 1e-4."""
    from diffusers import EulerDiscreteScheduler

    ours, _ = models
    scheduler = EulerDiscreteScheduler(**BETAS, timestep_spacing="linspace")
    for steps in (5, 20, 50):
        scheduler.set_timesteps(steps)
        sigmas = automatic_sigmas(DiscreteSchedule(ours.alphas_cumprod), steps)
        assert (sigmas - scheduler.sigmas).abs().max() < 1e-4


def test_group_norm_count_from_metadata_matches_diffusers(tmp_path):
    """A narrow model with 8 GroupNorm groups (as the demo model): the count is not in the shapes,
    so it travels as metadata; the single file and the diffusers folder both load it."""
    from safetensors.torch import load_file, save_file

    from core.errors import EngineError

    folder = tiny_models.save_diffusers_folder(tmp_path / "groups8", seed=3, norm_groups=8)
    files = tiny_models.save_single_files(folder, tmp_path, "groups8")
    state = load_file(files["safetensors"])
    save_file(state, files["safetensors"], metadata={"unet_norm_groups": "8", "vae_norm_groups": "8"})
    unet, vae, _ = tiny_models.diffusers_components(3, norm_groups=8)
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 77, tiny_models.TEXT_HIDDEN, generator=generator)
    latent = torch.randn(1, 4, 8, 8, generator=generator)
    with torch.no_grad():
        expected_eps = unet(x, torch.tensor([300.0]), encoder_hidden_states=context).sample
        expected_image = vae.decode(latent / 0.18215).sample
        for path in (files["safetensors"], folder):
            ours = load_model(path)
            assert ours.spec.unet.norm_groups == 8 and ours.spec.vae.norm_groups == 8
            assert (ours.unet(x, torch.tensor([300.0]), context) - expected_eps).abs().max() < 1e-4
            assert (ours.vae.decode(latent) - expected_image).abs().max() < 1e-4
        # Without the metadata the same weights are read with SD's 32 groups: a different model.
        plain = load_model(files["fp16"], dtype=torch.float32)
        assert plain.spec.unet.norm_groups == 32
        assert (plain.unet(x, torch.tensor([300.0]), context) - expected_eps).abs().max() > 1e-2
    save_file(state, files["safetensors"], metadata={"unet_norm_groups": "7"})
    with pytest.raises(EngineError, match="unet_norm_groups=7"):
        load_model(files["safetensors"])
