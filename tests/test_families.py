"""Model families (core/models/families.py): the registry decides latent format, preview
colours, picture size, schedule table, conditioner and LoRA family; previews use the running
model's colours (SDXL's for SDXL, the demo checkpoint's own from its metadata); a family added
through the registry alone is detected and used."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import tiny_models
from app.api.images import latent_preview as api_latent_preview
from app.preview import latent_preview, latent_rgb
from core.conditioning import TextConditioner, make_conditioner
from core.engine import Engine
from core.loading import load_model
from core.models import families
from core.models.detection import SD1, SDXL, detect
from core.models.families import SD1_LATENT, SDXL_LATENT, Family, LatentFormat, family_of
from core.params import GenerationParams
from core.sampling.schedules import DiscreteSchedule, get_sigmas
from core.text.tokenizer import load_clip_tokenizer
from core.training.common import DEMO_CHECKPOINT
from core.training.preview_factors import update_metadata

pytestmark = pytest.mark.usefixtures("one_thread")


def latent_showing(colour, latent_format: LatentFormat, size: int = 4) -> torch.Tensor:
    """A (1, C, size, size) latent that the format's preview map turns into ``colour`` (RGB 0..255):
    the smallest latent solving factors^T @ latent + bias = colour in [-1, 1]."""
    target = torch.tensor(colour, dtype=torch.float64) / 127.5 - 1 - torch.tensor(latent_format.rgb_bias, dtype=torch.float64)
    factors = torch.tensor(latent_format.rgb_factors, dtype=torch.float64)  # (C, 3)
    channels = torch.linalg.pinv(factors.T) @ target
    return channels.float()[None, :, None, None].expand(1, -1, size, size).clone()


def shapes_of(path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    return tiny_models.save_sdxl(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="module")
def demo():
    return load_model(DEMO_CHECKPOINT, dtype=torch.float32)


# ------------------------------------------------------------------ latent formats and previews


def test_sdxl_checkpoints_preview_with_sdxl_factors_and_sd1_with_sd1s(sdxl, tiny_checkpoints):
    xl = detect(shapes_of(sdxl["safetensors"]))
    assert xl.family == SDXL and xl.latent_format.rgb_factors == SDXL_LATENT.rgb_factors
    assert xl.latent_format.rgb_bias == SDXL_LATENT.rgb_bias and xl.latent_format.scaling_factor == pytest.approx(0.13025)
    # The published SDXL map (ComfyUI's SDXL latent format), not SD 1.x's.
    assert SDXL_LATENT.rgb_factors[0] == (0.3651, 0.4232, 0.4341) and SDXL_LATENT.rgb_factors != SD1_LATENT.rgb_factors
    sd1 = detect(shapes_of(tiny_checkpoints["safetensors"]))
    assert sd1.family == SD1 and sd1.latent_format.rgb_factors == SD1_LATENT.rgb_factors  # no metadata: the family's


@pytest.mark.parametrize("colour", [(230, 40, 40), (40, 200, 60), (250, 230, 40), (30, 60, 220)])
def test_a_latent_encoding_a_colour_previews_as_that_colour_for_its_own_family(colour):
    for own, other in ((SD1_LATENT, SDXL_LATENT), (SDXL_LATENT, SD1_LATENT)):
        latent = latent_showing(colour, own)
        shown = latent_rgb(latent, own)[0, 0].astype(int)
        assert np.abs(shown - colour).max() <= 2
        # The other family's map makes something else of it: the bug SDXL previews had.
        assert np.abs(latent_rgb(latent, other)[0, 0].astype(int) - colour).max() > 25


def test_the_page_and_the_api_preview_through_the_same_running_model_factors():
    latent = latent_showing((250, 230, 40), SDXL_LATENT)
    page = latent_preview(latent, SDXL_LATENT, scale=1)
    answer = api_latent_preview((latent, SDXL_LATENT))
    assert np.array_equal(np.asarray(page), np.asarray(answer))
    assert np.abs(np.asarray(answer)[0, 0].astype(int) - (250, 230, 40)).max() <= 2
    assert latent_preview(torch.zeros(1, 5, 4, 4), SDXL_LATENT) is None  # channels that do not fit


def test_an_sdxl_job_reports_sdxl_preview_factors_with_its_latents(sdxl, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(sdxl["safetensors"], models / "tiny-sdxl.safetensors")
    (tmp_path / "ext").mkdir()
    engine = Engine(device="cpu", ckpt_dir=models, output_dir=tmp_path / "out", hash_cache=tmp_path / "h.json",
                    extensions_dir=tmp_path / "ext")
    seen = []
    engine.txt2img(GenerationParams(prompt="a red circle", steps=2, width=32, height=32, seed=1, sampler="Euler",
                                    checkpoint="tiny-sdxl.safetensors"), progress=seen.append, save=False)
    assert seen and all(p.latent is not None and p.latent_format.rgb_factors == SDXL_LATENT.rgb_factors for p in seen)


# ------------------------------------------------------------------ the demo model's own colours


def test_the_demo_checkpoint_carries_its_own_preview_factors(demo):
    with safe_open(str(DEMO_CHECKPOINT), "pt") as f:
        metadata = f.metadata()
    assert demo.spec.latent_format.rgb_factors == tuple(tuple(r) for r in json.loads(metadata["latent_rgb_factors"]))
    assert demo.spec.latent_format.rgb_bias == tuple(json.loads(metadata["latent_rgb_bias"]))
    assert demo.spec.family == SD1 and demo.spec.latent_format.rgb_factors != SD1_LATENT.rgb_factors


def test_the_demo_previews_a_yellow_shape_on_black_as_yellowish_on_dark(demo):
    picture = torch.full((1, 3, 64, 64), 20 / 127.5 - 1)  # the demo's black
    yellow = torch.tensor([240, 220, 30]) / 127.5 - 1
    picture[0, :, 16:48, 16:48] = yellow[:, None, None]
    with torch.no_grad():
        latent = demo.vae.encode(picture)
    rgb = latent_rgb(latent, demo.spec.latent_format).astype(int)
    side = rgb.shape[0]
    inside = rgb[side * 3 // 8: side * 5 // 8, side * 3 // 8: side * 5 // 8].reshape(-1, 3).mean(0)
    outside = np.concatenate([rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3)]).mean(0)
    red, green, blue = inside
    assert red > 170 and green > 150 and blue < red - 80 and blue < green - 60, inside  # yellowish
    assert outside.max() < 110 and outside.mean() < inside.mean() - 80, outside  # dark around it
    # SD 1.x's colours (what the previews used before) turn it into dark on cyan.
    old = latent_rgb(latent, SD1_LATENT).astype(int)
    assert old[:2].reshape(-1, 3).mean(0)[2] > 150


def test_writing_preview_metadata_keeps_every_tensor_byte(tmp_path):
    path = tmp_path / "model.safetensors"
    tensors = {"a": torch.randn(3, 5), "b": torch.arange(7, dtype=torch.int64), "c": torch.randn(2).half()}
    save_file(tensors, str(path), metadata={"kept": "yes"})
    update_metadata(path, {"latent_rgb_factors": "[[1, 0, 0]]"})
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"kept": "yes", "latent_rgb_factors": "[[1, 0, 0]]"}
    loaded = load_file(str(path))
    assert all(torch.equal(loaded[k], v) and loaded[k].dtype == v.dtype for k, v in tensors.items())
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_preview_metadata_is_refused_with_its_name(tiny_checkpoints):
    shapes = shapes_of(tiny_checkpoints["safetensors"])
    from core.errors import EngineError

    with pytest.raises(EngineError, match="latent preview factors"):
        detect(shapes, {"latent_rgb_factors": "[[1, 2, 3]]"})
    assert detect(shapes, {"latent_rgb_factors": json.dumps([[0.5, 0, 0]] * 4)}).latent_format.rgb_factors[0] == (0.5, 0, 0)


# ------------------------------------------------------------------ a family added through the registry alone


FAKE_LATENT = LatentFormat(4, 0.25, 0.5, ((1.0, 0, 0), (0, 1.0, 0), (0, 0, 1.0), (0, 0, 0)), (0.1, 0.1, 0.1))
FAKE_AYS = (14.615, 5.0, 2.0, 1.0, 0.5, 0.029)
MARKER = "fake_family.marker"


@pytest.fixture
def fake_family():
    """A family defined here only: its detector claims checkpoints holding MARKER and reads the
    rest as SD 1.x weights; its conditioner factory records that it was asked."""
    from core.models.detection import detect_sd1

    made = []

    def conditioner(model, tokenizer, embeddings, clip_skip, emphasis, check_stop):
        made.append(model)
        return TextConditioner(model.text_encoder, tokenizer, embeddings, clip_skip, emphasis, check_stop)

    def detect_fake(shapes, metadata):
        rest = {k: v for k, v in shapes.items() if k != MARKER}
        return dataclasses.replace(detect_sd1(rest, metadata), family="fake")

    family = families.register(Family(
        "fake", "Fake family", latent=FAKE_LATENT, default_size=320, conditioner=conditioner,
        align_your_steps=FAKE_AYS, lora_family="fake", claims=lambda shapes: MARKER in shapes, detect=detect_fake,
    ))
    yield family, made
    families.unregister("fake")


def test_a_family_registered_alone_is_detected_sized_previewed_scheduled_and_conditioned(fake_family, tiny_checkpoints):
    family, made = fake_family
    shapes = shapes_of(tiny_checkpoints["safetensors"])
    spec = detect({**shapes, MARKER: (1,)})
    assert spec.family == "fake" and spec.family_info is family and spec.label == "Fake family"
    assert detect(shapes).family == SD1  # checkpoints without its marker are not claimed
    assert spec.default_size == 320
    assert spec.latent_format.rgb_factors == FAKE_LATENT.rgb_factors
    # Its latent space: scale and shift reach the VAE (sampling latent = (VAE latent - shift) * scale).
    assert spec.latent_format.shift == 0.5 and spec.vae.shift_factor == 0.5
    latent = torch.tensor([0.5, -0.5, 0.0, 9.0])[None, :, None, None].expand(1, 4, 2, 2)
    assert latent_rgb(latent, spec.latent_format)[0, 0].tolist() == [204, 76, 140]  # (x @ factors + 0.1 + 1) * 127.5, channel 3 unused
    schedule = DiscreteSchedule(tiny_models_alphas())
    sigmas = get_sigmas("Align Your Steps", "Euler", schedule, len(FAKE_AYS), family=spec.family)
    assert sigmas[:-1].tolist() == pytest.approx(FAKE_AYS)

    model = load_model(tiny_checkpoints["safetensors"])
    picture = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        plain_config = model.vae.config
        plain = model.vae.encode(picture)
        decoded = model.vae.decode(plain)
        model.vae.config = spec.vae
        shifted = model.vae.encode(picture)
        assert torch.allclose(shifted, plain - 0.5 * spec.vae.scaling_factor, atol=1e-5)
        assert torch.allclose(model.vae.decode(shifted), decoded, atol=1e-4)  # the same picture back
        model.vae.config = plain_config
    model.spec = spec
    conditioner = make_conditioner(model, load_clip_tokenizer())
    assert made == [model] and isinstance(conditioner, TextConditioner)

    from extensions.lora.merge import model_family

    assert model_family(model) == "fake" and family_of("fake") is family


def test_an_unregistered_family_is_gone_from_detection(tiny_checkpoints):
    shapes = shapes_of(tiny_checkpoints["safetensors"])
    assert detect({**shapes, MARKER: (1,)}).family == SD1  # the fixture removed it again
    with pytest.raises(Exception, match="unknown model family"):
        family_of("fake")


def tiny_models_alphas() -> torch.Tensor:
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)
