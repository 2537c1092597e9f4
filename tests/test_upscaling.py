"""core.upscaling: resamplers, spandrel model files (ESRGAN, Real-ESRGAN, the compact SRVGG net,
SwinIR) with random weights in their real key layouts, tiling, sizes, the CLI, and bad input.

ESRGAN and the compact net are checked against small reference networks written here (the
published architectures), so a file read by spandrel must give the very same pixels. SwinIR's
weights come from spandrel's own SwinIR class at a tiny size (its key layout is the original's).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from core.devices import resolve_dtype
from core.errors import EngineError
from core.images import read_infotext
from core.upscaling import (
    ModelCache,
    UpscalerInfo,
    find_upscaler,
    list_upscalers,
    load_upscaler,
    postprocess_infotext,
    target_size,
    upscale_image,
)
from core.upscaling.tiling import axis_weights, run_tiled, tile_starts

# spandrel's SwinIR builds its relative-position index with torch.meshgrid without indexing=.
pytestmark = pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")

ROOT = Path(__file__).resolve().parents[1]
W, H = 24, 20  # the test image: small, and not square


# ---------------------------------------------------------------- reference networks


class RDB(nn.Module):
    """Residual dense block: five 3x3 convs, each seeing all earlier features (growth 32)."""

    def __init__(self, nf: int, gc: int = 32):
        super().__init__()
        for k in range(1, 6):
            setattr(self, f"conv{k}", nn.Conv2d(nf + (k - 1) * gc, gc if k < 5 else nf, 3, 1, 1))

    def forward(self, x):
        feats = [x]
        for k in range(1, 5):
            feats.append(F.leaky_relu(getattr(self, f"conv{k}")(torch.cat(feats, 1)), 0.2))
        return self.conv5(torch.cat(feats, 1)) * 0.2 + x


class RRDB(nn.Module):
    def __init__(self, nf: int):
        super().__init__()
        self.rdb1, self.rdb2, self.rdb3 = RDB(nf), RDB(nf), RDB(nf)

    def forward(self, x):
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN's generator with Real-ESRGAN's (BasicSR's) parameter names."""

    def __init__(self, nf: int = 16, nb: int = 1, scale: int = 4):
        super().__init__()
        self.ups = int(math.log2(scale))
        self.conv_first = nn.Conv2d(3, nf, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(nf) for _ in range(nb)])
        self.conv_body = nn.Conv2d(nf, nf, 3, 1, 1)
        for i in range(self.ups):
            setattr(self, f"conv_up{i + 1}", nn.Conv2d(nf, nf, 3, 1, 1))
        self.conv_hr = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, 3, 3, 1, 1)

    def forward(self, x):
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(self.ups):
            feat = F.leaky_relu(getattr(self, f"conv_up{i + 1}")(F.interpolate(feat, scale_factor=2, mode="nearest")), 0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))

    def old_layout(self) -> dict[str, torch.Tensor]:
        """The same weights under the original ESRGAN names (model.N..., RDB convs as conv.0)."""
        nb = len(self.body)
        out = {}
        for key, value in self.state_dict().items():
            name, kind = key.rsplit(".", 1)
            if name == "conv_first":
                new = "model.0"
            elif name.startswith("body."):
                _, block, rdb, conv = name.split(".")
                new = f"model.1.sub.{block}.RDB{rdb[3:]}.{conv}.0"
            elif name == "conv_body":
                new = f"model.1.sub.{nb}"
            elif name.startswith("conv_up"):
                new = f"model.{3 * int(name[7:])}"
            elif name == "conv_hr":
                new = f"model.{3 * self.ups + 2}"
            else:
                new = f"model.{3 * self.ups + 4}"
            out[f"{new}.{kind}"] = value
        return out


class SRVGGCompact(nn.Module):
    """Real-ESRGAN's compact net: convs with PReLU, pixel shuffle, plus the nearest-upscaled input."""

    def __init__(self, nf: int = 8, num_conv: int = 2, scale: int = 2):
        super().__init__()
        self.scale = scale
        layers: list[nn.Module] = [nn.Conv2d(3, nf, 3, 1, 1), nn.PReLU(nf)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(nf, nf, 3, 1, 1), nn.PReLU(nf)]
        layers.append(nn.Conv2d(nf, 3 * scale * scale, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x):
        out = x
        for layer in self.body:
            out = layer(out)
        return F.pixel_shuffle(out, self.scale) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


def _calibrate(net: nn.Module, last: nn.Conv2d, std: float, bias: float | None) -> nn.Module:
    """Random weights give a nearly flat (or clipped) image; scale the last conv so the output
    varies by about ``std`` around mid-grey, as a real image does."""
    torch.manual_seed(1)
    with torch.no_grad():
        if bias is not None:
            last.bias.fill_(bias)
        probe = torch.rand(1, 3, 32, 32)
        spread = (net(probe) - (0 if bias is not None else F.interpolate(probe, scale_factor=net.scale))).std()
        last.weight.mul_(std / spread)
    return net.eval()


def _save_pair(folder: Path, stem: str, state: dict[str, torch.Tensor], wrap: str | None = None) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    pth = folder / f"{stem}.pth"
    torch.save({wrap: state} if wrap else state, pth)
    st = folder / f"{stem}-st.safetensors"
    save_file(state, str(st))
    return pth, st


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A models folder with every test model, as .pth and .safetensors, and the reference nets."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    esrgan = RRDBNet(nf=16, nb=1, scale=4)
    esrgan.scale = 4
    _calibrate(esrgan, esrgan.conv_last, 0.15, 0.5)
    compact = SRVGGCompact(nf=8, num_conv=2, scale=2)
    _calibrate(compact, compact.body[-1], 0.1, None)

    from core.upscaling.spandrel_import import import_spandrel

    import_spandrel()
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(2)
    swinir = SwinIR(img_size=16, patch_size=1, in_chans=3, embed_dim=12, depths=[2], num_heads=[2], window_size=4,
                    mlp_ratio=2.0, upscale=2, img_range=1.0, upsampler="pixelshuffledirect", resi_connection="1conv").eval()

    files = {
        "esrgan": _save_pair(root / "ESRGAN", "esrgan-old-x4", esrgan.old_layout()),
        "realesrgan": _save_pair(root / "RealESRGAN", "realesrgan-x4", esrgan.state_dict(), wrap="params_ema"),
        "compact": _save_pair(root / "RealESRGAN", "compact-x2", compact.state_dict()),
        "swinir": _save_pair(root / "SwinIR", "swinir-x2", swinir.state_dict(), wrap="params"),
    }
    nets = {"esrgan": esrgan, "realesrgan": esrgan, "compact": compact, "swinir": swinir}
    scales = {"esrgan": 4, "realesrgan": 4, "compact": 2, "swinir": 2}
    return root, files, nets, scales


def _test_image(seed: int = 0, size=(W, H), mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8))
    assert image.mode == mode
    return image


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int32)


# ---------------------------------------------------------------- listing and names


def test_list_resamplers_first_then_model_files_by_stem(models, tmp_path):
    root, *_ = models
    names = [i.name for i in list_upscalers(root)]
    assert names[:4] == ["None", "Lanczos", "Nearest", "Bicubic"]
    assert names[4:] == sorted(names[4:], key=str.lower)
    assert {"esrgan-old-x4", "esrgan-old-x4-st", "realesrgan-x4", "compact-x2", "swinir-x2-st"} <= set(names)
    assert all(i.path is None and i.kind == "resampler" for i in list_upscalers(root)[:4])

    # Duplicated stems (and a stem equal to a built-in) are named by their path; hidden files
    # and other suffixes are not upscalers.
    for folder in ("ESRGAN", "DAT"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "4x.pth").write_bytes(b"")
    (tmp_path / "HAT").mkdir()
    (tmp_path / "HAT" / "Lanczos.safetensors").write_bytes(b"")
    (tmp_path / "HAT" / ".hidden.pth").write_bytes(b"")
    (tmp_path / "HAT" / "notes.txt").write_text("x")
    (tmp_path / "Stable-diffusion").mkdir()
    (tmp_path / "Stable-diffusion" / "sd.safetensors").write_bytes(b"")
    listed = list_upscalers(tmp_path)
    assert [i.name for i in listed[4:]] == ["DAT/4x.pth", "ESRGAN/4x.pth", "HAT/Lanczos.safetensors"]
    assert all(i.kind == "spandrel" for i in listed[4:])
    assert find_upscaler("lanczos", tmp_path).kind == "resampler"  # names match case-insensitively
    assert find_upscaler("DAT/4x.pth", tmp_path).path == tmp_path / "DAT" / "4x.pth"


# ---------------------------------------------------------------- models


@pytest.mark.parametrize("which", ["esrgan", "realesrgan", "compact", "swinir"])
def test_model_loads_from_pth_and_safetensors_and_matches_the_network(models, which):
    root, files, nets, scales = models
    image = _test_image()
    x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = nets[which](x).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255
    scale = scales[which]
    cache = ModelCache()
    for path in files[which]:
        out = upscale_image(image, path.stem, scale=scale, models_root=root, tile=0, cache=cache)
        assert out.size == (W * scale, H * scale) and out.mode == "RGB"
        assert np.abs(_pixels(out) - expected).max() <= 1.0  # rounding to 8 bits only
        assert _pixels(out).std() > 10  # a real picture, not a flat or clipped one
        assert cache.loaded.architecture in {"ESRGAN", "RealESRGAN Compact", "SwinIR"}


@pytest.mark.parametrize("which", ["esrgan", "compact"])
def test_tiled_output_equals_untiled(models, which):
    """Tiles of 16 px overlapping by 8 on a 24x20 image (2x2 tiles): max difference 2/255."""
    root, files, _, scales = models
    image = _test_image(3)
    name = files[which][0].stem
    whole = upscale_image(image, name, scale=scales[which], models_root=root, tile=0)
    seen = []
    tiled = upscale_image(image, name, scale=scales[which], models_root=root, tile=16, overlap=8,
                          progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert np.abs(_pixels(tiled) - _pixels(whole)).max() <= 2


def test_tiling_is_exact_within_the_receptive_field():
    """A 5x5 box filter (reach 2 px) in tiles whose overlap/4 >= 2: equal to float rounding."""
    torch.manual_seed(0)
    image = torch.rand(1, 3, 37, 53)
    box = lambda t: F.interpolate(F.avg_pool2d(t, 5, 1, 2, count_include_pad=False), scale_factor=2, mode="nearest")
    whole = box(image)
    tiled = run_tiled(box, image, 2, tile=20, overlap=8)
    assert torch.allclose(whole, tiled, atol=1e-6)
    for length, tile, overlap in [(37, 20, 8), (53, 20, 8), (100, 64, 32), (65, 64, 16), (97, 64, 40)]:
        starts = tile_starts(length, tile, overlap)
        assert starts[0] == 0 and starts[-1] + tile == length
        assert all(b - a <= tile - min(overlap, tile // 2) for a, b in zip(starts, starts[1:]))
        total = torch.zeros(length * 2)
        for start, weight in zip(starts, axis_weights(starts, tile, length, 2)):
            total[start * 2:(start + tile) * 2] += weight
        assert total.min() > 0.99


def test_output_size_is_exact_for_factors_and_target_sizes(models):
    root, files, _, _ = models
    image = _test_image()
    compact = files["compact"][0].stem  # x2
    assert upscale_image(image, compact, scale=1.5, models_root=root).size == (36, 30)
    assert upscale_image(image, compact, scale=3, models_root=root).size == (72, 60)  # 2 passes, then Lanczos
    assert upscale_image(image, compact, scale=1, models_root=root).size == (W, H)
    assert upscale_image(image, compact, size=(50, 37), models_root=root).size == (50, 37)
    assert upscale_image(image, files["esrgan"][1].stem, size=(40, 40), models_root=root).size == (40, 40)
    assert target_size((W, H), size=(48, None)) == ((48, 40), False)
    assert target_size((W, H), scale=2) == ((48, 40), False)
    with pytest.raises(EngineError, match="not both"):
        target_size((W, H), scale=2, size=(48, 40))
    with pytest.raises(EngineError, match="positive"):
        target_size((W, H), scale=-1)


def test_alpha_is_kept_and_resized(models):
    root, files, _, _ = models
    image = _test_image(5, mode="RGBA")
    out = upscale_image(image, files["compact"][0].stem, scale=2, models_root=root)
    assert out.mode == "RGBA" and out.size == (2 * W, 2 * H)
    expected_alpha = image.getchannel("A").resize((2 * W, 2 * H), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(expected_alpha))


def test_last_model_is_cached_and_reloaded_when_the_file_changes(models, tmp_path):
    root, files, _, _ = models
    cache = ModelCache()
    first = load_upscaler(find_upscaler("compact-x2", root), "cpu", None, cache)
    assert load_upscaler(find_upscaler("compact-x2", root), "cpu", None, cache) is first
    other = load_upscaler(find_upscaler("swinir-x2", root), "cpu", None, cache)
    assert other is not first and cache.loaded is other
    assert load_upscaler(find_upscaler("compact-x2", root), "cpu", None, cache) is not first
    copy = tmp_path / "RealESRGAN" / "c.pth"
    copy.parent.mkdir()
    copy.write_bytes(files["compact"][0].read_bytes())
    info = find_upscaler("c", tmp_path)
    a = load_upscaler(info, "cpu", None, cache)
    os.utime(copy, ns=(1, 1))
    assert load_upscaler(info, "cpu", None, cache) is not a


# ---------------------------------------------------------------- resamplers


def test_resamplers_sizes_and_nearest_duplicates_pixels(tmp_path):
    image = _test_image(1)
    for name in ("None", "Lanczos", "Nearest", "Bicubic"):
        assert upscale_image(image, name, scale=2, models_root=tmp_path).size == (2 * W, 2 * H)
        assert upscale_image(image, name, size=(31, 17), models_root=tmp_path).size == (31, 17)
    nearest = np.asarray(upscale_image(image, "Nearest", scale=2, models_root=tmp_path))
    source = np.asarray(image)
    assert np.array_equal(nearest, source.repeat(2, axis=0).repeat(2, axis=1))
    assert np.array_equal(np.asarray(upscale_image(image, "None", scale=1, models_root=tmp_path)), source)
    lanczos = upscale_image(image, "Lanczos", scale=2, models_root=tmp_path)
    assert np.array_equal(np.asarray(lanczos), np.asarray(image.resize((2 * W, 2 * H), Image.Resampling.LANCZOS)))


def test_postprocess_infotext():
    assert postprocess_infotext("4x-UltraSharp", scale=2) == "Postprocess upscale by: 2, Postprocess upscaler: 4x-UltraSharp"
    assert postprocess_infotext("a, b", size=(512, 384)) == 'Postprocess upscale to: 512x384, Postprocess upscaler: "a, b"'
    source = "a cat\nSteps: 20, Sampler: Euler, Seed: 1"
    assert postprocess_infotext("Lanczos", scale=1.5, source=source) == (
        source + ", Postprocess upscale by: 1.5, Postprocess upscaler: Lanczos")


# ---------------------------------------------------------------- command line


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-m", "core", "upscale", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_batch_over_a_folder_writes_one_png_per_image(models, tmp_path):
    root, *_ = models
    inputs = tmp_path / "in"
    inputs.mkdir()
    _test_image(1).save(inputs / "a.png")
    _test_image(2).convert("RGB").save(inputs / "b photo.jpg", quality=95)
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", "a dog\nSteps: 20, Sampler: Euler, Seed: 7")
    _test_image(3).save(inputs / "c.png", pnginfo=info)
    (inputs / "readme.txt").write_text("not an image")
    out = tmp_path / "out"
    done = _cli("--input-dir", str(inputs), "--upscaler", "compact-x2", "--scale", "2", "--out", str(out),
                "--models-dir", str(root), "--device", "cpu", "--tile", "16", "--tile-overlap", "8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    written = sorted(out.iterdir())
    assert [p.name for p in written] == ["00000-a.png", "00001-b_photo.png", "00002-c.png"]
    assert done.stdout.split() == [str(p) for p in written]
    for path in written:
        with Image.open(path) as image:
            assert image.size == (2 * W, 2 * H)
    assert read_infotext(written[0]) == "Postprocess upscale by: 2, Postprocess upscaler: compact-x2"
    assert read_infotext(written[2]) == ("a dog\nSteps: 20, Sampler: Euler, Seed: 7, Postprocess upscale by: 2, "
                                         "Postprocess upscaler: compact-x2")

    # A target size, one image; nothing already there is overwritten.
    done = _cli("--image", str(inputs / "a.png"), "--upscaler", "Lanczos", "--width", "30", "--height", "25",
                "--out", str(out), "--models-dir", str(root), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    new = out / "00003-a.png"
    assert done.stdout.strip() == str(new) and len(list(out.iterdir())) == 4
    with Image.open(new) as image:
        assert image.size == (30, 25)
    assert read_infotext(new) == "Postprocess upscale to: 30x25, Postprocess upscaler: Lanczos"


def test_cli_non_image_input_is_one_line_exit_2(models, tmp_path):
    root, *_ = models
    bogus = tmp_path / "photo.png"
    bogus.write_text("this is text")
    done = _cli("--image", str(bogus), "--upscaler", "Lanczos", "--out", str(tmp_path / "o"),
                "--models-dir", str(root), cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "photo.png: not an image" in lines[0]
    assert "Traceback" not in done.stderr and not (tmp_path / "o").exists()


def _main_error(capsys, *args: str) -> str:
    from core.__main__ import main

    rc = main(["upscale", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bad_inputs_give_one_line_errors(models, tmp_path, capsys):
    root, files, _, _ = models
    image = tmp_path / "in.png"
    _test_image().save(image)
    common = ["--image", str(image), "--out", str(tmp_path / "out"), "--models-dir", str(root), "--device", "cpu"]

    line = _main_error(capsys, *common, "--upscaler", "4x-NoSuchModel")
    assert "unknown upscaler '4x-NoSuchModel'" in line and "Lanczos" in line and "compact-x2" in line

    text_model = root / "ESRGAN" / "notes.pth"
    text_model.write_text("not a model at all\n")
    line = _main_error(capsys, *common, "--upscaler", "notes")
    assert "notes.pth: not a model file" in line

    plain = root / "ESRGAN" / "unknown-arch.safetensors"
    save_file({"foo.weight": torch.zeros(3, 3), "bar.bias": torch.zeros(3)}, str(plain))
    line = _main_error(capsys, *common, "--upscaler", "unknown-arch")
    assert "unknown-arch.safetensors: not an upscaler model spandrel understands" in line

    line = _main_error(capsys, *common, "--upscaler", "../outside.pth")
    assert "outside the models folder" in line
    elsewhere = tmp_path / "elsewhere.pth"
    elsewhere.write_bytes(files["compact"][0].read_bytes())
    assert "outside the models folder" in _main_error(capsys, *common, "--upscaler", str(elsewhere))

    assert "not both" in _main_error(capsys, *common, "--upscaler", "Lanczos", "--scale", "2", "--width", "8")
    assert not (tmp_path / "out").exists()

    with pytest.raises(EngineError, match="not an image"):
        upscale_image(np.zeros((4, 4, 3)), "Lanczos", scale=2, models_root=root)


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('the pickle ran code')",))


def test_pickle_that_would_run_code_is_refused_and_never_runs(models, tmp_path, capsys):
    root, files, nets, _ = models
    marker = tmp_path / "pwned.txt"
    evil = root / "ESRGAN" / "evil.pth"
    state = {k: v.clone() for k, v in nets["compact"].state_dict().items()}
    state["payload"] = _RunsCode(marker)
    torch.save(state, evil)
    # The payload works: plain unpickling runs it (proof the test file is really dangerous).
    control = tmp_path / "control.txt"
    import pickle

    pickle.loads(pickle.dumps(_RunsCode(control)))
    assert control.exists()

    image = tmp_path / "in.png"
    _test_image().save(image)
    line = _main_error(capsys, "--image", str(image), "--upscaler", "evil", "--out", str(tmp_path / "out"),
                       "--models-dir", str(root))
    assert "evil.pth: refused to load" in line
    with pytest.raises(EngineError, match="evil.pth: refused"):
        upscale_image(_test_image(), "evil", scale=2, models_root=root)
    assert not marker.exists()


def test_spandrel_imports_without_torchvision():
    from core.upscaling.spandrel_import import import_spandrel, torchvision_importable

    if torchvision_importable():
        pytest.skip("a working torchvision is installed: the stand-in is not used")
    import_spandrel()
    assert not any(name == "torchvision" or name.startswith("torchvision.") for name in sys.modules)
    restoreformer = sys.modules["spandrel.architectures.RestoreFormer"]
    with pytest.raises(EngineError, match="needs torchvision"):
        restoreformer.tv_normalize(torch.zeros(1, 3, 2, 2), [0.5] * 3, [0.5] * 3)


def test_upscaler_info_is_plain_data():
    info = UpscalerInfo("x", None, "resampler")
    assert info == UpscalerInfo("x", None, "resampler") and hash(info) == hash(UpscalerInfo("x", None, "resampler"))


def test_precision_choice_and_fallback_to_fp32(models):
    from types import SimpleNamespace

    from core.upscaling.spandrel_models import choose_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    half_ok = SimpleNamespace(supports_half=True, supports_bfloat16=True)
    no_half = SimpleNamespace(supports_half=False, supports_bfloat16=True)
    fp32_only = SimpleNamespace(supports_half=False, supports_bfloat16=False)
    assert choose_dtype(half_ok, cpu, None) == resolve_dtype("auto", cpu)  # bf16 where the CPU has it natively
    assert choose_dtype(half_ok, cuda, None) == torch.float16
    assert choose_dtype(no_half, cuda, None) == torch.bfloat16  # SwinIR, DAT, ...
    assert choose_dtype(no_half, cuda, torch.float16) == torch.float32
    assert choose_dtype(fp32_only, cuda, torch.bfloat16) == torch.float32

    root, files, _, _ = models
    image = _test_image()
    reference = upscale_image(image, "compact-x2", scale=2, models_root=root, cache=ModelCache())
    upscaler = load_upscaler(find_upscaler("compact-x2", root), "cpu", torch.bfloat16, ModelCache())
    assert upscaler.dtype == torch.bfloat16
    low = upscaler.upscale(image, (2 * W, 2 * H), tile=0, overlap=0)
    assert np.abs(_pixels(low) - _pixels(reference)).max() <= 8

    # Half precision that overflows (NaN) is redone in fp32, and the model stays in fp32.
    real_run = upscaler._run
    upscaler._run = lambda pixels, *a: real_run(pixels, *a) * (float("nan") if upscaler.dtype != torch.float32 else 1)
    again = upscaler.upscale(image, (2 * W, 2 * H), tile=0, overlap=0)
    assert upscaler.dtype == torch.float32 and next(upscaler.descriptor.model.parameters()).dtype == torch.float32
    # (the weights went through bf16 and back, hence the tolerance)
    assert np.abs(_pixels(again) - _pixels(reference)).max() <= 8


def test_out_of_memory_retries_with_smaller_tiles(models):
    root, *_ = models
    upscaler = load_upscaler(find_upscaler("compact-x2", root), "cpu", None, ModelCache())
    real = upscaler.descriptor
    sizes = []

    class RunsOutOfMemory:
        def __getattr__(self, name):
            return getattr(real, name)

        def __call__(self, piece):
            sizes.append(tuple(piece.shape[-2:]))
            if max(piece.shape[-2:]) > 24:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(piece)

    image = _test_image(4, size=(48, 40))
    expected = upscaler.upscale(image, (96, 80), tile=24, overlap=32)
    upscaler.descriptor = RunsOutOfMemory()
    out = upscaler.upscale(image, (96, 80), tile=0, overlap=32)
    assert sizes[0] == (40, 48) and max(max(s) for s in sizes[1:]) == 24
    assert np.array_equal(np.asarray(out), np.asarray(expected))
    sizes.clear()
    with pytest.raises(EngineError, match="out of memory even with"):
        upscaler.upscale(_test_image(4, size=(30, 30)), (60, 60), tile=0, overlap=0)  # 15 px tiles: too small
