"""The UNet's Conv2d with weights arranged once for oneDNN (core/models/convolution.py): the same
numbers as nn.Conv2d, a new arrangement whenever the weight changes, nothing kept after a job."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from core.models.convolution import PREPACK_AVAILABLE, Conv2d, release_packed_weights, use_prepacked_convolutions

pytestmark = pytest.mark.skipif(not PREPACK_AVAILABLE, reason="this torch has no oneDNN convolution operators")


def plain(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


@pytest.mark.parametrize("in_channels, out_channels, kernel, stride, padding, size", [
    (8, 16, 3, 1, 1, 9), (16, 16, 3, 2, 1, 10), (16, 8, 1, 1, 0, 7), (4, 32, 3, 1, 1, 5),
])
@torch.no_grad()
def test_the_arranged_weight_gives_the_plain_convolution(in_channels, out_channels, kernel, stride, padding, size):
    torch.manual_seed(0)
    conv = Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding)
    use_prepacked_convolutions(conv)
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, in_channels, size, size + 1).contiguous(memory_format=layout)
        got = conv(x)
        assert conv._packed is not None  # it did take the arranged path
        torch.testing.assert_close(got, plain(conv, x), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_a_changed_weight_is_arranged_again():
    torch.manual_seed(1)
    conv = Conv2d(8, 8, 3, padding=1)
    use_prepacked_convolutions(conv)
    x = torch.randn(1, 8, 6, 6)
    before = conv(x)
    conv.weight.mul_(2)  # written in place, as a LoRA merge on an accelerator does: a new version
    torch.testing.assert_close(conv(x), plain(conv, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(conv(x), before)
    conv.weight.data = torch.randn_like(conv.weight)  # swapped, as a LoRA merge on the CPU does
    torch.testing.assert_close(conv(x), plain(conv, x), rtol=1e-5, atol=1e-5)
    bigger = torch.randn(1, 8, 12, 12)  # another input shape
    torch.testing.assert_close(conv(bigger), plain(conv, bigger), rtol=1e-5, atol=1e-5)


def test_training_other_dtypes_and_switched_off_take_the_plain_path():
    torch.manual_seed(2)
    conv = Conv2d(4, 4, 3, padding=1)
    use_prepacked_convolutions(conv)
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    conv(x).sum().backward()  # with gradients: nn.Conv2d's path, which autograd can go back through
    assert x.grad is not None and conv.weight.grad is not None and conv._packed is None
    with torch.no_grad():
        conv.to(torch.float64)(x.double())
        assert conv._packed is None
        conv.float()
        conv(x)
        assert conv._packed is not None
        assert use_prepacked_convolutions(conv, on=False) == 1 and conv._packed is None
        conv(x)
        assert conv._packed is None


@torch.no_grad()
def test_the_unet_runs_the_same_with_arranged_weights_and_frees_them(tiny_checkpoints):
    from core.loading import load_model
    from core.speed import prepare_for_speed

    model = load_model(tiny_checkpoints["safetensors"])
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 6, generator=generator)
    context = torch.randn(2, 77, model.unet.config.context_dim, generator=generator)
    t = torch.tensor([500.0, 20.0])
    expected = model.unet(x, t, context)
    prepare_for_speed(model, torch.device("cpu"))
    got = model.unet(x, t, context)
    packed = [m for m in model.unet.modules() if isinstance(m, Conv2d) and m._packed is not None]
    assert len(packed) == len([m for m in model.unet.modules() if isinstance(m, Conv2d)]) > 10
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert got.is_contiguous()
    release_packed_weights(model.unet)
    assert all(m._packed is None for m in packed)
    release_packed_weights(model.unet)  # nothing left to free: no error


@pytest.mark.parametrize("available, arranged", [(64 * 2**30, True), (2**30, False)])
@torch.no_grad()
def test_sampling_arranges_the_weights_only_when_memory_allows_and_frees_them(tiny_checkpoints, monkeypatch,
                                                                               available, arranged):
    import core.speed
    from core.loading import load_model
    from core.speed import arranged_while_sampling, prepare_for_speed

    model = load_model(tiny_checkpoints["safetensors"])
    prepare_for_speed(model, torch.device("cpu"))
    monkeypatch.setattr(core.speed, "available_memory", lambda device: available)
    convolutions = [m for m in model.unet.modules() if isinstance(m, Conv2d)]
    x = torch.randn(2, 4, 8, 8)
    context = torch.randn(2, 77, model.unet.config.context_dim)
    expected = None
    with arranged_while_sampling(model, None):
        expected = model.unet(x, torch.tensor([10.0, 10.0]), context)
        assert all((m._packed is not None) == arranged for m in convolutions)
    assert all(m._packed is None and m.prepack for m in convolutions)  # freed; switched on again for the next time
    torch.testing.assert_close(model.unet(x, torch.tensor([10.0, 10.0]), context), expected, rtol=1e-4, atol=1e-5)


def test_a_job_leaves_no_arranged_weights_behind(tiny_checkpoints, tmp_path):
    from core.engine import Engine
    from core.params import GenerationParams

    engine = Engine(device="cpu", ckpt_dir=Path(tiny_checkpoints["safetensors"]).parent, output_dir=tmp_path,
                    hash_cache=tmp_path / "h.json")

    def arranged_now():
        return sum(m._packed is not None for m in engine.loaded.model.unet.modules() if isinstance(m, Conv2d))

    during = []
    engine.txt2img(GenerationParams(prompt="a red circle", steps=2, width=64, height=64, seed=1,
                                    checkpoint=Path(tiny_checkpoints["safetensors"]).name),
                   progress=lambda p: during.append(arranged_now()), save=False)
    convolutions = [m for m in engine.loaded.model.unet.modules() if isinstance(m, Conv2d)]
    assert during and min(during) == len(convolutions) > 10  # arranged while sampling (memory allows here)
    assert arranged_now() == 0 and all(m.prepack for m in convolutions)
