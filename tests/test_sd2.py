"""SD 2.x (epsilon and v-prediction) and the x4 upscaler: loading from single files and diffusers
folders, how the prediction type is found, zero-terminal-SNR, generation through the engine, and
parity with diffusers on identical random weights (float64, as tests/test_parity.py)."""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import tiny_models
from diffusers_oracle import oracle_scheduler
from core.conditioning import make_conditioner
from core.engine import Engine
from core.errors import EngineError
from core.loading import load_model, looks_like_v_prediction, prediction_test_value
from core.models.detection import SD2, SD2_INPAINT, X4_UPSCALER
from core.models.stable_diffusion import linear_alphas_cumprod, rescale_zero_terminal_snr
from core.params import GenerationParams
from core.pipelines.sampling_run import sample_latents
from core.text.tokenizer import load_clip_tokenizer

PROMPT, NEGATIVE = "a red circle at the top left, masterpiece", "blurry, low quality"
LDM_V_YAML = 'model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n    parameterization: "v"\n    linear_start: 0.00085\n'


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    return tiny_models.save_sd2(tmp_path_factory.mktemp("sd2"), prediction="v")


@pytest.fixture(scope="module")
def x4(tmp_path_factory):
    return tiny_models.save_x4(tmp_path_factory.mktemp("x4"))


def test_single_file_and_folder_load_the_same_network(sd2):
    single, folder = load_model(sd2["safetensors"], prediction="v"), load_model(sd2["diffusers"])
    assert single.spec.family == folder.spec.family == SD2
    assert single.spec.text.num_layers == 3 and folder.spec.text.num_layers == 2  # diffusers drops the unused layer
    assert (single.spec.text.skip_last, folder.spec.text.skip_last) == (1, 0)
    assert folder.spec.prediction == "v" and folder.spec.prediction_source == "metadata"  # the scheduler config
    ids = torch.tensor([load_clip_tokenizer(pad_with_eos=False).encode_padded(PROMPT)])
    assert ids[0, -1] == 0  # OpenCLIP pads with 0
    with torch.no_grad():
        assert torch.allclose(single.text_encoder(ids), folder.text_encoder(ids), atol=1e-6)
    # The single file's own text tower round-trips: q/k/v fused again, projection kept.
    saved = load_file(sd2["safetensors"])
    ours = single.checkpoint_state_dict()
    for key in ("cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight", "cond_stage_model.model.text_projection",
                "cond_stage_model.model.logit_scale", "cond_stage_model.model.positional_embedding"):
        assert torch.equal(ours[key], saved[key]), key


class ClosedFormUNet(torch.nn.Module):
    """The exact denoiser for data that is a point mass at ``mean``: given x_t at timestep t it
    returns the true noise (eps) or the true v = sqrt(a) eps - sqrt(1 - a) x0."""

    def __init__(self, prediction: str, mean: float, context_dim: int = 8):
        super().__init__()
        self.prediction, self.mean = prediction, mean
        self.config = type("Config", (), {"in_channels": 4, "context_dim": context_dim})()
        self.alphas_cumprod = linear_alphas_cumprod(type("S", (), {"linear_start": 0.00085, "linear_end": 0.012,
                                                                   "num_timesteps": 1000, "zero_terminal_snr": False})())
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t, context):
        assert context.shape[-1] == self.config.context_dim
        a = self.alphas_cumprod[t.long()].double()[:, None, None, None]
        eps = (x.double() - a.sqrt() * self.mean) / (1 - a).sqrt()
        out = eps if self.prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * self.mean
        return out.to(x.dtype)


@pytest.mark.parametrize("mean", [0.75, 1.0, 2.0])
def test_v_prediction_test_pass_tells_exact_eps_and_v_models_apart(mean):
    """A1111's test forward pass on denoisers whose output is exactly eps or exactly v."""
    eps_model, v_model = ClosedFormUNet("eps", mean), ClosedFormUNet("v", mean)
    a = float(eps_model.alphas_cumprod[999])
    eps = (0.5 - a**0.5 * mean) / (1 - a) ** 0.5
    assert prediction_test_value(eps_model) == pytest.approx(eps - 0.5, abs=1e-6)
    assert prediction_test_value(v_model) == pytest.approx(a**0.5 * eps - (1 - a) ** 0.5 * mean - 0.5, abs=1e-6)
    assert not looks_like_v_prediction(eps_model)
    assert looks_like_v_prediction(v_model)


@pytest.mark.parametrize("answer,expected,size", [(True, "v", 768), (False, "eps", 512)])
def test_single_file_without_hints_runs_the_test_pass(sd2, monkeypatch, answer, expected, size):
    seen = []
    monkeypatch.setattr("core.loading.looks_like_v_prediction", lambda unet: seen.append(unet) or answer)
    model = load_model(sd2["safetensors"])
    assert seen and seen[0] is model.unet
    assert (model.spec.prediction, model.spec.prediction_source, model.spec.default_size) == (expected, "detected", size)


def test_sidecar_yaml_metadata_and_override(sd2, tmp_path, monkeypatch):
    monkeypatch.setattr("core.loading.looks_like_v_prediction", lambda unet: pytest.fail("no test pass when told"))
    path = tmp_path / "model.safetensors"
    shutil.copy(sd2["safetensors"], path)
    (tmp_path / "model.yaml").write_text(LDM_V_YAML)
    assert (load_model(path).spec.prediction, load_model(path).spec.prediction_source) == ("v", "yaml")
    (tmp_path / "model.yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")  # ldm config: eps
    assert (load_model(path).spec.prediction, load_model(path).spec.prediction_source) == ("eps", "yaml")
    sgm = "model:\n  params:\n    denoiser_config:\n      params:\n        scaling_config:\n          target: sgm.modules.diffusionmodules.denoiser_scaling.VScaling\n"
    (tmp_path / "model.yaml").write_text(sgm)
    assert load_model(path).spec.prediction == "v"
    override = load_model(path, prediction="eps")  # the user wins over the yaml
    assert (override.spec.prediction, override.spec.prediction_source) == ("eps", "override")
    with pytest.raises(EngineError, match="prediction: must be auto, eps or v"):
        load_model(path, prediction="x0")
    (tmp_path / "model.yaml").unlink()
    save_file(load_file(path), path, metadata={"modelspec.prediction_type": "v"})
    assert (load_model(path).spec.prediction, load_model(path).spec.prediction_source) == ("v", "metadata")


def test_zero_terminal_snr_rescale(sd2, tmp_path):
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr as diffusers_rescale

    base = torch.cumprod(1 - torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2, 0)
    ours = rescale_zero_terminal_snr(base)
    theirs = torch.cumprod(1 - diffusers_rescale(1 - torch.cat([base[:1], base[1:] / base[:-1]])), 0)
    assert ours[0] == pytest.approx(float(base[0]))
    assert torch.allclose(ours[:-1], theirs[:-1], atol=1e-9)  # Lin et al.'s algorithm 1
    assert ours[-1] == 4.8973451890853435e-08  # A1111's finite stand-in for 0
    model = load_model(sd2["safetensors"], prediction="v", zero_terminal_snr=True)
    assert model.spec.zero_terminal_snr and model.alphas_cumprod[-1] == pytest.approx(4.8973451890853435e-08)
    folder = tmp_path / "zsnr"
    shutil.copytree(sd2["diffusers"], folder)
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"num_train_timesteps"', '"rescale_betas_zero_snr": true, "num_train_timesteps"'))
    assert load_model(folder).spec.zero_terminal_snr and not load_model(sd2["diffusers"]).spec.zero_terminal_snr


def diffusers_sd2(components, prediction, sampler, steps, seeds, width, height, alphas_cumprod):
    from diffusers import StableDiffusionPipeline

    unet, vae, text = (c.double() for c in components)
    kind = "v_prediction" if prediction == "v" else "epsilon"
    scheduler, extra = oracle_scheduler(sampler, steps, alphas_cumprod, prediction_type=kind)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=load_clip_tokenizer(pad_with_eos=False).hf, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    latents = torch.stack([torch.randn(4, height // 8, width // 8, generator=torch.Generator().manual_seed(s)) for s in seeds])
    return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, guidance_scale=7.0, width=width, height=height,
                latents=latents.double(), num_images_per_prompt=len(seeds), output_type="latent", **extra).images


@pytest.mark.parametrize("prediction,sampler", [("v", "Euler"), ("eps", "DDIM")])
def test_sd2_latents_match_diffusers(sd2, prediction, sampler):
    """The whole tower in our file, the truncated one in diffusers': same context (penultimate
    layer + ln_final), OpenCLIP padding, linear projections, v or eps."""
    ours = load_model(sd2["safetensors"], dtype=torch.float64, prediction=prediction)
    unet, vae, text, _ = tiny_models.sd2_components(0)
    params = GenerationParams(prompt=PROMPT, negative_prompt=NEGATIVE, steps=6, cfg_scale=7.0, width=64, height=48, sampler=sampler)
    a = sample_latents(ours, make_conditioner(ours, load_clip_tokenizer()), params, [3])
    b = diffusers_sd2((unet, vae, text), prediction, sampler, 6, [3], 64, 48, ours.alphas_cumprod)
    assert a.dtype == torch.float64 and a.abs().mean() > 0.1
    assert (a - b).abs().max() < 1e-4


def test_engine_generates_with_sd2_files_and_folders(sd2, tmp_path):
    """A sidecar yaml makes the single file v-prediction, the folder's scheduler says so too:
    both layouts give the same picture through Engine.txt2img."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(sd2["safetensors"], models / "tiny-sd2.safetensors")
    (models / "tiny-sd2.yaml").write_text(LDM_V_YAML)
    shutil.copytree(sd2["diffusers"], models / "tiny-sd2-diffusers")
    engine = Engine(device="cpu", ckpt_dir=models, output_dir=tmp_path / "out", hash_cache=tmp_path / "h.json")
    pictures = []
    for name in ("tiny-sd2.safetensors", "tiny-sd2-diffusers"):
        params = GenerationParams(prompt="a (red:1.2) cat", negative_prompt="dog", steps=3, width=64, height=64, seed=5, checkpoint=name)
        result = engine.txt2img(params, save=False)[0]
        assert engine.loaded.model.spec.prediction == "v"
        pictures.append(torch.tensor(list(result.image.getdata())).float())
    assert pictures[0].std() > 1
    assert (pictures[0] - pictures[1]).abs().max() <= 1


def test_sd2_inpainting_is_its_own_family(tmp_path):
    paths = tiny_models.save_sd2(tmp_path, "tiny-sd2-inpainting", prediction="eps", in_channels=9)
    model = load_model(paths["safetensors"])
    assert model.spec.family == SD2_INPAINT and model.spec.prediction_source == "default"  # no test pass: always eps
    params = GenerationParams(prompt="a cat", steps=2, width=32, height=32)
    latents = sample_latents(model, make_conditioner(model, load_clip_tokenizer()), params, [1])
    assert latents.shape == (1, 4, 4, 4) and torch.isfinite(latents).all()


# --- x4 upscaler -----------------------------------------------------------------------------


def test_x4_loads_from_both_layouts_and_is_not_a_generator(x4, tmp_path):
    single, folder = load_model(x4["safetensors"]), load_model(x4["diffusers"])
    assert single.spec.family == folder.spec.family == X4_UPSCALER
    assert single.spec.prediction == "v" and single.vae.config.downsample_factor == 4
    assert single.unet.config.disable_self_attn == (False, True, False)
    a, b = single.checkpoint_state_dict(), folder.checkpoint_state_dict()
    for key in b:
        if not key.startswith("cond_stage_model."):
            assert torch.equal(a[key], b[key]), key
    with pytest.raises(EngineError, match="upscaler"):
        sample_latents(single, make_conditioner(single, load_clip_tokenizer()), GenerationParams(width=32, height=32), [1])


def test_x4_latents_match_diffusers_upscale_pipeline(x4, monkeypatch):
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_upscale as upscale_module

    from core.pipelines.x4_upscale import x4_latents

    ours = load_model(x4["safetensors"], dtype=torch.float64)
    unet, vae, text, _ = (c.double() if isinstance(c, torch.nn.Module) else c for c in tiny_models.x4_components(0))
    image = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(9))
    seed, steps, level = 4, 5, 40
    a = x4_latents(ours, make_conditioner(ours, load_clip_tokenizer()), image.double() * 2 - 1, PROMPT,
                   negative_prompt=NEGATIVE, noise_level=level, steps=steps, cfg_scale=9.0, seeds=[seed], sampler="DDIM")
    # ldm's low-scale "linear" schedule is diffusers' "scaled_linear".
    low_res = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", num_train_timesteps=1000)
    scheduler = DDIMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", num_train_timesteps=1000,
                              steps_offset=1, timestep_spacing="leading", set_alpha_to_one=False, clip_sample=False,
                              prediction_type="v_prediction")
    pipe = StableDiffusionUpscalePipeline(vae=vae, text_encoder=text, tokenizer=load_clip_tokenizer(pad_with_eos=False).hf,
                                          unet=unet, low_res_scheduler=low_res, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, 4, 12, 16, generator=generator)  # our order: latent noise, then the picture's
    # diffusers would draw the picture's noise in the pipeline's dtype (float64 here): draw it in
    # float32 as every real run does.
    monkeypatch.setattr(upscale_module, "randn_tensor", lambda shape, generator, device, dtype: torch.randn(shape, generator=generator).to(device, dtype))
    b = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, image=image.double(), num_inference_steps=steps, guidance_scale=9.0,
             noise_level=level, generator=generator, latents=latents.double(), output_type="latent").images
    assert a.abs().mean() > 0.1
    assert (a - b).abs().max() < 1e-4


def test_upscale_x4_pictures_whole_and_tiled(x4):
    from PIL import Image

    from core.pipelines.x4_upscale import upscale_x4

    model = load_model(x4["safetensors"])
    picture = Image.fromarray((torch.rand(12, 10, 3, generator=torch.Generator().manual_seed(1)) * 255).byte().numpy())
    whole = upscale_x4(model, picture, "a photo", noise_level=20, steps=2, seed=3, tile=None)
    assert whole.size == (40, 48)
    same = upscale_x4(model, picture, "a photo", noise_level=20, steps=2, seed=3, tile=64)  # one tile covers it
    assert list(same.getdata()) == list(whole.getdata())
    tiled = upscale_x4(model, picture, "a photo", noise_level=20, steps=2, seed=3, tile=8, tile_overlap=4)
    assert tiled.size == (40, 48)
    with pytest.raises(EngineError, match="noise_level"):
        upscale_x4(model, picture, noise_level=351)


def test_engine_prediction_and_zero_terminal_snr_overrides(sd2, tmp_path, monkeypatch):
    """Engine.load takes the overrides (kept as the engine's settings); a job loads the
    checkpoint again when they change, and the picture changes with them."""
    monkeypatch.setattr("core.loading.looks_like_v_prediction", lambda unet: True)  # "auto" finds v
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(sd2["safetensors"], models / "tiny-sd2.safetensors")
    engine = Engine(device="cpu", ckpt_dir=models, output_dir=tmp_path / "out", hash_cache=tmp_path / "h.json")
    params = GenerationParams(prompt="a red cat", steps=3, width=32, height=32, seed=5, checkpoint="tiny-sd2.safetensors")

    def picture():
        result = engine.txt2img(params, save=False)[0]
        return torch.tensor(list(result.image.getdata())).float(), result.infotext

    auto, _ = picture()
    spec = engine.loaded.model.spec
    assert (spec.prediction, spec.prediction_source, engine.loaded.overrides) == ("v", "detected", ("auto", None))
    first = engine.loaded
    engine.load("tiny-sd2.safetensors")
    assert engine.loaded is first  # same file, same overrides: not loaded again

    engine.load("tiny-sd2.safetensors", prediction="eps")
    assert engine.prediction == "eps" and engine.loaded is not first
    spec = engine.loaded.model.spec
    assert (spec.prediction, spec.prediction_source, spec.default_size) == ("eps", "override", 512)
    eps, _ = picture()
    assert (eps - auto).abs().mean() > 1

    engine.prediction = "v"  # a settings change: the next job reloads
    v, text = picture()
    assert engine.loaded.model.spec.prediction_source == "override" and torch.equal(v, auto)
    assert "Noise Schedule" not in text

    engine.zero_terminal_snr = True
    zsnr, text = picture()
    assert engine.loaded.model.spec.zero_terminal_snr
    assert float(engine.loaded.model.alphas_cumprod[-1]) == pytest.approx(4.8973451890853435e-08)
    assert (zsnr - v).abs().mean() > 1
    assert "Noise Schedule: Zero Terminal SNR" in text  # A1111's field for its sd_noise_schedule setting

    with pytest.raises(EngineError, match="prediction: must be auto, eps or v"):
        engine.load("tiny-sd2.safetensors", prediction="x0")
    assert engine.prediction == "v"


def test_engine_default_size_from_the_file(sd2, tmp_path):
    """ModelSpec.default_size read from the header (no load), with the engine's overrides; an
    SD 2.x file with no hint cannot tell until its test pass has run."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(sd2["safetensors"], models / "tiny-sd2.safetensors")
    shutil.copytree(sd2["diffusers"], models / "tiny-sd2-diffusers")  # its scheduler says v
    sdxl = tiny_models.save_sdxl(tmp_path / "sdxl")
    shutil.copy(sdxl["safetensors"], models / "tiny-sdxl.safetensors")
    engine = Engine(device="cpu", ckpt_dir=models, output_dir=tmp_path / "out", hash_cache=tmp_path / "h.json")
    assert engine.default_size() is None  # nothing loaded
    assert engine.default_size("tiny-sdxl.safetensors") == 1024
    assert engine.default_size("tiny-sd2-diffusers") == 768
    assert engine.default_size("tiny-sd2.safetensors") is None
    assert engine.loaded is None  # all of that without loading
    engine.prediction = "eps"
    assert engine.default_size("tiny-sd2.safetensors") == 512 and engine.default_size("tiny-sd2-diffusers") == 512
    engine.load("tiny-sdxl.safetensors")
    assert engine.default_size() == 1024
    with pytest.raises(EngineError, match="checkpoint: 'nope' not found"):
        engine.default_size("nope")
