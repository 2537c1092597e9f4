"""Seamless tiling (core/pipelines/seamless.py): inside a tiled job the UNet and the VAE pad
circularly, so their results move with a shifted input around the edges (what makes a picture's
edges continue each other); the padding is zeros again after the job, also one that fails or is
interrupted; the CPU's arranged convolution pads circularly too; the infotext says Tiling."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.engine import Engine
from core.infotext import parse_infotext, params_from_infotext
from core.models.convolution import PREPACK_AVAILABLE, Conv2d, use_prepacked_convolutions
from core.params import GenerationParams
from core.pipelines.seamless import padded_convolutions, seamless_tiling

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model(tiny_checkpoints):
    from core.loading import load_model

    return load_model(tiny_checkpoints["safetensors"])


@pytest.fixture(scope="module")
def engine(tiny_checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiling-outputs")
    (out / "no-extensions").mkdir()
    return Engine(device="cpu", ckpt_dir=tiny_checkpoints["safetensors"].parent, output_dir=out / "images",
                  hash_cache=out / "hashes.json", extensions_dir=out / "no-extensions")


def padding_modes(model) -> set[str]:
    return {conv.padding_mode for conv in padded_convolutions(model)}


@pytest.mark.skipif(not PREPACK_AVAILABLE, reason="this torch has no oneDNN convolution operators")
@torch.no_grad()
def test_the_arranged_convolution_pads_circularly_when_asked():
    torch.manual_seed(0)
    reference = torch.nn.Conv2d(8, 8, 3, padding=1, padding_mode="circular")
    arranged = Conv2d(8, 8, 3, padding=1)
    arranged.load_state_dict(reference.state_dict())
    use_prepacked_convolutions(arranged)
    x = torch.randn(1, 8, 9, 10)
    zeros = arranged(x)
    assert arranged._packed is not None  # zeros padding: oneDNN's arranged path
    arranged.padding_mode = "circular"
    torch.testing.assert_close(arranged(x), reference(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(arranged(x)[..., 0], zeros[..., 0], atol=1e-3)  # the edge column did change


@torch.no_grad()
def test_the_unet_and_the_vae_move_with_their_input_around_the_edges(model):
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 4, 16, 16, generator=generator)
    context = torch.randn(1, 77, model.unet.config.context_dim, generator=generator)
    t = torch.tensor([500.0])

    def unet(x):
        return model.unet(x, t, context)

    def shifted(x, latent_pixels, scale=1):  # right and down, the overflow coming back on the other side
        return torch.roll(x, shifts=(latent_pixels * scale, 2 * latent_pixels * scale), dims=(-2, -1))

    # The UNet halves its map twice: a shift by 4 latent pixels is a whole number at every level.
    with seamless_tiling([model], True):
        assert padding_modes(model) == {"circular"}
        torch.testing.assert_close(unet(shifted(latent, 4)), shifted(unet(latent), 4), rtol=1e-4, atol=1e-4)
        decoded = model.vae.decode(latent)
        torch.testing.assert_close(model.vae.decode(shifted(latent, 3)), shifted(decoded, 3, scale=8),
                                   rtol=1e-4, atol=1e-4)
    assert padding_modes(model) == {"zeros"}
    # Padded with zeros, the edges are edges: the same shift does not commute.
    assert not torch.allclose(model.vae.decode(shifted(latent, 3)), shifted(model.vae.decode(latent), 3, scale=8),
                              atol=1e-3)


def test_the_padding_comes_back_when_the_block_fails(model):
    with pytest.raises(RuntimeError, match="sampling failed"):
        with seamless_tiling([model], True):
            raise RuntimeError("sampling failed")
    assert padding_modes(model) == {"zeros"}
    with seamless_tiling([model], False):
        assert padding_modes(model) == {"zeros"}


def wrap_ratio(image, axis: int) -> float:
    """The mean colour step across the picture's wrap (last row/column to first) over the mean
    step between neighbours inside it, along ``axis`` (0: top-bottom, 1: left-right): about 1
    where the edges continue each other."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    inner = np.abs(np.diff(pixels, axis=axis)).mean()
    first, last = np.take(pixels, 0, axis=axis), np.take(pixels, -1, axis=axis)
    return float(np.abs(first - last).mean() / inner)


def test_a_tiled_picture_continues_over_its_edges_and_the_model_is_restored(engine):
    # The tiny model's random weights make busy pictures: three seeds, both axes, averaged.
    common = dict(prompt="a pattern", steps=3, width=64, height=64, seed=7, sampler="Euler", batch_size=3)
    plain = engine.txt2img(GenerationParams(**common), save=False)
    tiled = engine.txt2img(GenerationParams(**common, tiling=True), save=False)
    assert padding_modes(engine.loaded.model) == {"zeros"}
    plain_ratio = np.mean([wrap_ratio(r.image, axis) for r in plain for axis in (0, 1)])
    tiled_ratio = np.mean([wrap_ratio(r.image, axis) for r in tiled for axis in (0, 1)])
    # Tiled, stepping over the edge is like stepping between neighbours; untiled it is a jump.
    assert tiled_ratio < 1.1, tiled_ratio
    assert plain_ratio > tiled_ratio + 0.2, (plain_ratio, tiled_ratio)
    assert parse_infotext(tiled[0].infotext)["Tiling"] == "True"
    assert "Tiling" not in parse_infotext(plain[0].infotext)
    assert params_from_infotext(tiled[0].infotext)[0].tiling is True


def test_an_interrupted_tiled_job_leaves_zeros_padding(engine):
    def interrupt(progress):
        assert padding_modes(engine.loaded.model) == {"circular"}
        engine.interrupt()

    params = GenerationParams(prompt="x", steps=3, width=64, height=64, seed=1, tiling=True)
    kept = engine.txt2img(params, progress=interrupt, save=False)
    # The picture reached so far is handed back (as A1111 shows it), marked incomplete.
    assert [r.incomplete for r in kept] == [True] and kept[0].path is None
    assert padding_modes(engine.loaded.model) == {"zeros"}


def test_tiling_must_be_a_bool():
    from core.errors import EngineError

    with pytest.raises(EngineError, match="tiling"):
        GenerationParams(tiling="yes").validate()
