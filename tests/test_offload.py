"""core/offload.py: the transformer's blocks streamed through a device one at a time, text encoders
visiting it for each prompt, the plan between that and keeping everything resident, the engine's
``offload`` setting; and the loader's memory (mapped tensors, peak resident memory of a ~200 MB
FLUX file in a fresh process).

No accelerator is needed: the "device" is ``meta`` (a tensor there has no data, so a block that
ran on it without its weights arriving would fail) or the CPU itself, and what is on it at each
moment is recorded by forward hooks registered after the streaming ones."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import core.offload as offload
from core.models.flux import FluxConfig, FluxTransformer
from core.models.mmdit import MMDiT, MMDiTConfig
from core.offload import (RESIDENT, STREAM, EncoderVisits, encoder_visits, offload_plan, place, stream_blocks,
                          streamed_blocks, tensor_bytes)
from tiny_models import REFERENCE_DIR

ROOT = Path(__file__).resolve().parent.parent
META = torch.device("meta")
GIB = 2**30
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_network(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "flux":
        return FluxTransformer(FluxConfig(hidden_size=256, num_heads=2, depth=2, depth_single=3)).eval()
    return MMDiT(MMDiTConfig(depth=3, hidden_size=128, num_heads=2, pos_embed_max_size=8, mlp_hidden=512)).eval()


def network_inputs(kind: str, device=torch.device("cpu")):
    generator = torch.Generator().manual_seed(1)
    if kind == "flux":
        args = (torch.randn(1, 16, 6, 8, generator=generator), torch.tensor([0.5]), torch.randn(1, 5, 4096, generator=generator),
                torch.randn(1, 768, generator=generator))
        return [a.to(device) for a in args], {"guidance": torch.tensor([3.5], device=device)}
    args = (torch.randn(1, 16, 8, 8, generator=generator), torch.tensor([500.0]), torch.randn(1, 7, 4096, generator=generator),
            torch.randn(1, 2048, generator=generator))
    return [a.to(device) for a in args], {}


def on(device: torch.device, module: torch.nn.Module) -> bool:
    return all(p.device.type == device.type for p in [*module.parameters(), *module.buffers()])


def device_bytes(network: torch.nn.Module, device: torch.device) -> int:
    """Bytes of the network's weights on ``device`` now, shared ones once."""
    found = {id(t): t.numel() * t.element_size() for t in [*network.parameters(), *network.buffers()]
             if t.device.type == device.type}
    return sum(found.values())


class Recorder:
    """Forward hooks on every block (after the streaming ones): which block runs, what is on the
    device then, and whether the block's weights went home after."""

    def __init__(self, network: torch.nn.Module, device: torch.device):
        self.network, self.device, self.blocks = network, device, streamed_blocks(network)
        self.ran, self.peak, self.problems = [], 0, []
        for index, block in enumerate(self.blocks):
            block.register_forward_pre_hook(lambda module, args, i=index: self.before(i))
            block.register_forward_hook(lambda module, args, output, i=index: self.after(i))

    def before(self, index: int) -> None:
        self.ran.append(index)
        self.peak = max(self.peak, device_bytes(self.network, self.device))
        if not on(self.device, self.blocks[index]):
            self.problems.append(f"block {index} runs without its weights on the device")

    def after(self, index: int) -> None:
        if not on(torch.device("cpu"), self.blocks[index]):
            self.problems.append(f"block {index} kept weights on the device after its forward")

    def on_device_while_running(self, index: int) -> list[int]:
        return [i for i, block in enumerate(self.blocks) if on(self.device, block)]


def resident_bytes(network: torch.nn.Module) -> int:
    return tensor_bytes(network) - sum(tensor_bytes(block) for block in streamed_blocks(network))


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_each_block_is_on_the_device_exactly_while_it_runs(kind):
    network = tiny_network(kind)
    blocks = streamed_blocks(network)
    assert len(blocks) == (5 if kind == "flux" else 3)
    handle = stream_blocks(network, META, prefetch=False)
    recorder = Recorder(network, META)
    # Who else is on the device while a block runs: nobody.
    others = []
    for index, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda module, args, i=index: others.append(
            [j for j, b in enumerate(blocks) if j != i and not on(torch.device("cpu"), b)]))
    args, kwargs = network_inputs(kind, META)
    out = network(*args, **kwargs)
    assert out.device == META and out.shape == args[0].shape
    assert recorder.problems == []
    assert recorder.ran == list(range(len(blocks)))
    assert others == [[]] * len(blocks)
    # The layers around the blocks live on the device; the blocks, between forwards, in CPU memory.
    assert all(on(torch.device("cpu"), block) for block in blocks)
    largest = max(tensor_bytes(block) for block in blocks)
    assert resident_bytes(network) < recorder.peak <= largest + resident_bytes(network)
    assert device_bytes(network, META) == resident_bytes(network) and handle.device_bytes() == 0
    handle.remove()
    recorder.ran.clear()
    with pytest.raises(RuntimeError):  # no hooks any more: CPU block weights meet meta inputs
        network(*args, **kwargs)


def test_prefetch_brings_the_next_block_while_one_runs():
    network = tiny_network("flux")
    blocks = streamed_blocks(network)
    stream_blocks(network, META, prefetch=True)
    present = []
    for index, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda module, args: present.append([j for j, b in enumerate(blocks) if on(META, b)]))
    recorder = Recorder(network, META)
    args, kwargs = network_inputs("flux", META)
    network(*args, **kwargs)
    assert present == [[0, 1], [1, 2], [2, 3], [3, 4], [4]]
    two_largest = sum(sorted(tensor_bytes(block) for block in blocks)[-2:])
    assert recorder.peak <= two_largest + resident_bytes(network)
    assert all(on(torch.device("cpu"), block) for block in blocks)


@pytest.mark.parametrize("kind", ["flux", "sd3"])
def test_a_streamed_run_gives_the_plain_run_and_keeps_the_weights(kind):
    network = tiny_network(kind)
    args, kwargs = network_inputs(kind)
    parameters = dict(network.named_parameters())
    state = {k: v.clone() for k, v in network.state_dict().items()}
    with torch.no_grad():
        plain = network(*args, **kwargs)
        handle = stream_blocks(network, torch.device("cpu"))
        assert handle.prefetch is False  # off the CUDA: a copy could not overlap the compute
        streamed = network(*args, **kwargs)
        again = network(*args, **kwargs)
    assert torch.equal(streamed, plain) and torch.equal(again, plain)
    # The same Parameter objects with the same values: LoRA merging and state dicts are unaffected.
    assert all(parameters[name] is p for name, p in network.named_parameters())
    assert all(torch.equal(v, state[k]) for k, v in network.state_dict().items())
    handle.remove()


def test_a_forward_that_failed_inside_a_block_leaves_nothing_behind():
    network = tiny_network("sd3")
    args, kwargs = network_inputs("sd3")
    handle = stream_blocks(network, META, prefetch=False)
    failing = streamed_blocks(network)[1]

    def fail(module, args):
        raise MemoryError("out of device memory")

    hook = failing.register_forward_pre_hook(fail)
    meta_args = [a.to(META) for a in args]
    with pytest.raises(MemoryError):
        network(*meta_args, **kwargs)
    assert handle.device_bytes() > 0  # block 1 arrived, its forward never ran to its end
    hook.remove()
    recorder = Recorder(network, META)
    network(*meta_args, **kwargs)
    assert recorder.problems == [] and handle.device_bytes() == 0
    assert recorder.peak <= max(tensor_bytes(b) for b in streamed_blocks(network)) + resident_bytes(network)


def test_weights_to_pin_are_packed_into_one_buffer_in_place(monkeypatch):
    """CUDA's page-locking is registered on one buffer per block (offload.pin_buffer says why):
    the block's tensors become views of it, the same objects with the same values."""
    block = tiny_network("flux").double_blocks[0]
    block.register_buffer("steps", torch.arange(3))  # an integer buffer among bf16/float32 weights
    block.img_attn.qkv.weight.data = block.img_attn.qkv.weight.data.t().contiguous().t()  # not contiguous
    block.to(torch.bfloat16)
    before = {name: (t, t.clone()) for name, t in [*block.named_parameters(), *block.named_buffers()]}
    pinned = []
    monkeypatch.setattr(offload, "pin_buffer", lambda buffer, owner: pinned.append((buffer, owner)) or True)
    visitor = offload.Visitor(block, pin=True)
    ((buffer, owner),) = pinned
    assert owner is visitor and visitor.pinned
    start, end = buffer.data_ptr(), buffer.data_ptr() + buffer.numel()
    assert visitor.bytes <= buffer.numel() < visitor.bytes + len(before) * offload.PACKING_ALIGNMENT
    for name, tensor in [*block.named_parameters(), *block.named_buffers()]:
        original, value = before[name]
        assert tensor is original and torch.equal(tensor, value), name
        assert start <= tensor.data_ptr() < end and (tensor.data_ptr() - start) % offload.PACKING_ALIGNMENT == 0, name
    assert not offload.Visitor(block).pinned  # off the CUDA nothing is pinned
    monkeypatch.undo()
    if not torch.cuda.is_available():  # page-locking without CUDA: refused with a warning, no error
        assert offload.pin_buffer(torch.zeros(16, dtype=torch.uint8), visitor) is False


def test_tied_tensors_travel_once_and_come_home():
    module = torch.nn.Module()
    module.first = torch.nn.Embedding(10, 4)
    module.second = torch.nn.Linear(4, 10, bias=False)
    module.second.weight = module.first.weight
    home = module.first.weight
    visits = EncoderVisits([module], META)
    with visits():
        assert module.first.weight.device == META and module.second.weight is module.first.weight
    assert module.first.weight is home and module.second.weight is home
    assert visits.arrived(torch.ones(2)).device == META and visits.arrived(None) is None
    idle = EncoderVisits()
    with idle():
        pass
    assert idle.arrived(home) is home


def test_networks_without_blocks_are_refused():
    with pytest.raises(ValueError, match="double_blocks"):
        stream_blocks(torch.nn.Linear(2, 2), META)


def manifest_parameters(name: str, prefix: str = "") -> int:
    manifest = json.loads((REFERENCE_DIR / name).read_text())
    return sum(int(torch.Size(shape).numel()) for key, shape in manifest["tensors"].items() if key.startswith(prefix))


def test_the_plan_for_the_released_sizes():
    flux_dev = manifest_parameters("flux1_transformer.json") * 2  # bf16
    sd35_large = manifest_parameters("mmdit_sd35_large.json") * 2
    t5 = manifest_parameters("t5xxl_encoder.json") * 2  # fp16
    card_24gb = 23 * GIB  # what a 24 GB card has free beside the desktop
    assert offload_plan(flux_dev, t5, card_24gb) == STREAM
    assert not offload.blocks_fit(flux_dev, card_24gb)  # FLUX.1 dev's blocks stream even alone
    assert offload_plan(sd35_large, t5, card_24gb) == STREAM
    assert offload.blocks_fit(sd35_large, card_24gb)  # SD 3.5 large stays resident once T5 is out
    assert offload_plan(sd35_large, t5, 80 * GIB) == RESIDENT
    assert offload_plan(flux_dev, t5, None) == RESIDENT  # a CPU: nothing to offload to
    edge = flux_dev + t5 + offload.ACTIVATION_HEADROOM
    assert offload_plan(flux_dev, t5, edge) == RESIDENT and offload_plan(flux_dev, t5, edge - 1) == STREAM


@pytest.fixture(scope="module")
def flux_file(tmp_path_factory):
    """A tiny FLUX.1 dev single file (diffusers' components in ComfyUI's layout) and its tokenizer."""
    from tiny_flow_models import flux_components, flux_scheduler, save_flow_folder, save_single_file

    root = tmp_path_factory.mktemp("offload")
    folder = save_flow_folder(root / "build", flux_components(0), "FluxPipeline", flux_scheduler("dev"))
    return save_single_file(folder, root / "models" / "Stable-diffusion" / "tiny-flux.safetensors")


def placed(path: Path, free: int | None, mode: str, monkeypatch):
    from core.loading import load_model

    model = load_model(path)
    monkeypatch.setattr(offload, "free_device_bytes", lambda device: free)
    return model, place(model, META, mode)


def test_place_keeps_a_model_resident_where_it_fits(flux_file, monkeypatch):
    model, placement = placed(flux_file, 10 * GIB, "auto", monkeypatch)
    assert placement.plan == RESIDENT and placement.blocks is None and model.offload is placement
    assert on(META, model)
    assert encoder_visits(model).visitors == []


def test_place_sends_the_encoders_out_first(flux_file, monkeypatch):
    model, _ = placed(flux_file, 10 * GIB, "auto", monkeypatch)
    size = tensor_bytes(model.unet) + tensor_bytes(model.vae)
    model, placement = placed(flux_file, size + offload.ACTIVATION_HEADROOM, "auto", monkeypatch)
    assert placement.plan == STREAM and placement.blocks is None
    assert on(META, model.unet) and on(META, model.vae)
    assert all(on(torch.device("cpu"), e) for e in model.encoder_modules)
    assert len(encoder_visits(model).visitors) == len(model.encoder_modules) == 2


def test_always_streams_and_the_conditioner_takes_the_encoders_along(flux_file, monkeypatch):
    from core.flow_conditioning import FlowConditioner
    from core.text.tokenizer import load_clip_tokenizer

    model, placement = placed(flux_file, 10 * GIB, "always", monkeypatch)
    assert placement.plan == STREAM and placement.blocks is not None
    assert on(META, model.vae) and on(META, model.unet.img_in) and model.device == META
    assert all(on(torch.device("cpu"), block) for block in streamed_blocks(model.unet))
    t5 = model.text_part("t5xxl")
    seen = []
    t5.transformer.register_forward_pre_hook(lambda module, args, kwargs: seen.append(on(META, module)), with_kwargs=True)
    conditioner = FlowConditioner(model, load_clip_tokenizer())
    encoded = conditioner.encode("a red cat")
    assert seen == [True]  # T5 ran on the device ...
    assert all(on(torch.device("cpu"), e) for e in model.encoder_modules)  # ... and went home after
    assert encoded.t5.device == META and encoded.pooled.device == META
    assert place(model, torch.device("cpu"), "always") is None and place(model, META, "never") is None
    with pytest.raises(ValueError, match="offload must be"):
        place(model, META, "sometimes")


def test_encoders_run_where_they_are_when_the_device_is_full(flux_file, monkeypatch):
    model, _ = placed(flux_file, 0, "always", monkeypatch)
    visits = encoder_visits(model)
    with visits():
        assert all(on(torch.device("cpu"), e) for e in model.encoder_modules)
    assert visits.arrived(torch.ones(1)).device == META
    # Each encoder by itself: here the tiny T5 fits and the (larger) tiny CLIP does not.
    clip, t5 = model.text_part("clip_l"), model.text_part("t5xxl")
    assert tensor_bytes(t5) < tensor_bytes(clip)
    monkeypatch.setattr(offload, "ACTIVATION_HEADROOM", 0)
    monkeypatch.setattr(offload, "free_device_bytes", lambda device: tensor_bytes(t5))
    with visits():
        assert on(torch.device("cpu"), clip) and on(META, t5)
    assert on(torch.device("cpu"), t5)


def test_only_flow_checkpoints_load_into_cpu_memory_first(flux_file, tmp_path):
    from safetensors.torch import save_file

    other = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, other)
    cuda = torch.device("cuda")
    assert offload.load_device("auto", cuda, flux_file) == torch.device("cpu")
    assert offload.load_device("always", cuda, flux_file) == torch.device("cpu")
    assert offload.load_device("never", cuda, flux_file) == cuda
    assert offload.load_device("auto", cuda, other) == cuda
    assert offload.load_device("auto", torch.device("cpu"), flux_file) == torch.device("cpu")
    # A pickled checkpoint has no header to read: it loads where it always did.
    pickled = tmp_path / "sd15.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}}, pickled)
    assert offload.load_device("auto", cuda, pickled) == cuda


def test_the_engine_setting_and_the_launch_flag(tmp_path):
    import launch
    from core.engine import Engine
    from core.errors import EngineError

    assert launch.build_parser().parse_args([]).offload == "auto"
    assert launch.build_parser().parse_args(["--offload", "never"]).offload == "never"
    assert Engine(device="cpu", ckpt_dir=tmp_path, models_dir=tmp_path, offload="always").offload == "always"
    with pytest.raises(EngineError, match="offload"):
        Engine(device="cpu", ckpt_dir=tmp_path, models_dir=tmp_path, offload="sometimes")


# --- the loader's memory ----------------------------------------------------------------------

MEMORY_PROBE = r"""
import gc, json, re, sys
import torch
from core.loading import load_model

def status(field):
    return 1024 * int(re.search(field + r":\s+(\d+)", open("/proc/self/status").read()).group(1))

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS

model = load_model(sys.argv[1], dtype=torch.bfloat16)  # every import the loader makes, done
for path in sys.argv[2:]:
    del model
    gc.collect()
    base = status("VmRSS")
    reset_peak()
    model = load_model(path, dtype=torch.bfloat16)
    loaded = status("VmHWM") - base
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.sum()  # reads every page of every weight
    touched = status("VmHWM") - base
    weights = sum(t.numel() * t.element_size() for t in {id(t): t for t in [*model.parameters(), *model.buffers()]}.values())
    print(json.dumps({"loaded": loaded, "touched": touched, "weights": weights}))
"""


def write_bigger_flux(tiny: Path, out: Path, fp8: bool) -> Path:
    """The tiny file with its transformer swapped for one of hidden size 1024 (2 double and 2
    single blocks: 112 M parameters, 224 MB in bf16); with ``fp8`` its matrices in float8_e4m3fn."""
    from safetensors.torch import load_file, save_file

    tensors = {k: v for k, v in load_file(tiny).items() if not k.startswith("model.diffusion_model.")}
    context_dim = tensors["text_encoders.t5xxl.transformer.shared.weight"].shape[1]
    config = FluxConfig(hidden_size=1024, num_heads=8, depth=2, depth_single=2, context_dim=context_dim, pooled_dim=32)
    with torch.device("meta"):
        shapes = FluxTransformer(config).state_dict()
    for key, value in shapes.items():
        weight = torch.full(value.shape, 0.02, dtype=torch.bfloat16)  # the values do not matter here, the bytes do
        if fp8 and weight.ndim == 2:
            weight = weight.to(torch.float8_e4m3fn)
        tensors["model.diffusion_model." + key] = weight
    save_file(tensors, out)
    return out


def test_loading_peak_memory(flux_file, tmp_path):
    """Peak resident memory of loading, measured in a fresh process (VmHWM, reset before each load).

    A bf16 file loaded as bf16 is used where it is mapped: nothing is read at load, every page
    once when the weights are used, so the peak stays at the file's size (measured: 1.00x; the
    1.6 is margin). An fp8 file is widened to bf16 as it is read (core/flow_files.upcast_fp8),
    one tensor at a time into the model's own copy; what else is resident at the peak is the
    fp8 file's mapped pages (half the bf16 bytes: clean page cache the kernel may drop, not a
    second copy), so the peak is 1.5x the model's bf16 bytes (measured: 1.49x), never the two
    bf16 copies (2x) a widening of the whole table followed by another conversion would hold."""
    (tmp_path / "tokenizer.json").write_bytes((flux_file.parent / "tokenizer.json").read_bytes())
    plain = write_bigger_flux(flux_file, tmp_path / "big.safetensors", fp8=False)
    fp8 = write_bigger_flux(flux_file, tmp_path / "big-fp8.safetensors", fp8=True)
    result = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(flux_file), str(plain), str(fp8)],
                            capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    measured_plain, measured_fp8 = map(json.loads, result.stdout.strip().splitlines()[-2:])
    size = plain.stat().st_size
    assert measured_plain["weights"] > 200e6 and fp8.stat().st_size < 0.6 * size
    assert measured_plain["loaded"] < 0.25 * size, measured_plain  # still mapped, not read
    assert measured_plain["touched"] < 1.6 * size, measured_plain
    assert measured_fp8["weights"] == measured_plain["weights"]
    assert measured_fp8["touched"] < 1.6 * measured_fp8["weights"], measured_fp8


# --- docs/MODELS_FLOW.md: its tables are these computations -----------------------------------

GB = 1e9
CARDS_GB = (8, 12, 16, 24)
RAM_GB = (24, 32, 64)
CARD_RESERVE = 1e9  # the driver and a desktop on the card
RAM_RESERVE = 3e9  # the system, Python and torch beside the weights


def manifest_tensors(name: str) -> dict[str, list[int]]:
    return json.loads((REFERENCE_DIR / name).read_text())["tensors"]


def parameters(tensors: dict[str, list[int]], prefix: str = "") -> int:
    return sum(int(torch.Size(shape).numel()) for key, shape in tensors.items() if key.startswith(prefix))


def vae16_parameters() -> int:
    """The SD3/FLUX autoencoder: the 4-channel one of vae_standalone.json with a 16-channel latent
    (encoder.conv_out 2 x 16 channels, decoder.conv_in 16) and no quant convolutions."""
    vae = manifest_tensors("vae_standalone.json")
    latent16 = {**vae, "encoder.conv_out.weight": [32, 512, 3, 3], "encoder.conv_out.bias": [32],
                "decoder.conv_in.weight": [512, 16, 3, 3]}
    return parameters({k: v for k, v in latent16.items() if "quant_conv" not in k})


def largest_block(tensors: dict[str, list[int]], lists: tuple[str, ...]) -> int:
    blocks = {".".join(key.split(".")[:2]) for key in tensors if key.startswith(lists)}
    return max(parameters(tensors, block + ".") for block in blocks)


def flow_parts() -> dict[str, int]:
    flux = manifest_tensors("flux1_transformer.json")
    sdxl = manifest_tensors("sdxl_base.json")
    guidance = parameters(flux, "guidance_in.")
    return {
        "SD 3.5 large transformer": parameters(manifest_tensors("mmdit_sd35_large.json")),
        "SD 3.5 medium transformer": parameters(manifest_tensors("mmdit_sd35_medium.json")),
        "FLUX.1 dev transformer": parameters(flux),
        "FLUX.1 schnell transformer": parameters(flux) - guidance,
        "T5-XXL encoder (t5xxl)": parameters(manifest_tensors("t5xxl_encoder.json")),
        "CLIP-G encoder (clip_g)": parameters(sdxl, "conditioner.embedders.1."),
        "CLIP-L encoder (clip_l)": parameters(sdxl, "conditioner.embedders.0."),
        "16-channel VAE (ae)": vae16_parameters(),
    }


def flow_models() -> dict[str, dict]:
    """Each model's bytes in bf16/fp16: transformer + VAE, encoders (in the order they visit), and
    what streaming keeps on the device (the layers around the blocks, the two largest blocks)."""
    parts = flow_parts()
    t5, clip_g, clip_l, vae = (parts[name] * 2 for name in ("T5-XXL encoder (t5xxl)", "CLIP-G encoder (clip_g)",
                                                            "CLIP-L encoder (clip_l)", "16-channel VAE (ae)"))
    models = {}
    for name, manifest, encoders, lists in (
        ("SD 3.5 large", "mmdit_sd35_large.json", (clip_l, clip_g, t5), ("joint_blocks.",)),
        ("SD 3.5 medium", "mmdit_sd35_medium.json", (clip_l, clip_g, t5), ("joint_blocks.",)),
        ("FLUX.1 dev", "flux1_transformer.json", (clip_l, t5), ("double_blocks.", "single_blocks.")),
    ):
        tensors = manifest_tensors(manifest)
        blocks = parameters({k: v for k, v in tensors.items() if k.startswith(lists)})
        streamed_share = (parameters(tensors) - blocks + 2 * largest_block(tensors, lists)) * 2 + vae
        models[name] = dict(model=parameters(tensors) * 2 + vae, encoders=encoders, streamed=streamed_share)
    return models


def card_cell(model: dict, card_gb: int) -> str:
    free = card_gb * GB - CARD_RESERVE
    encoders = sum(model["encoders"])
    if offload.offload_plan(model["model"], encoders, free) == RESIDENT:
        return "all resident"
    if offload.blocks_fit(model["model"], free):
        transformer, left = "transformer resident", free - model["model"]
    elif model["streamed"] + offload.ACTIVATION_HEADROOM <= free:
        transformer, left = "blocks streamed", free - model["streamed"]
    else:
        return "does not fit"
    on_cpu = []
    for size in model["encoders"]:  # as EncoderVisits decides: in order, each where it fits
        if size + offload.ACTIVATION_HEADROOM // 4 <= left:
            left -= size
        else:
            on_cpu.append(size)
    if not on_cpu:
        return f"{transformer}, encoders visit"
    return f"{transformer}, T5 on the CPU" if on_cpu == [model["encoders"][-1]] else f"{transformer}, encoders on the CPU"


def ram_cell(model: dict, ram_gb: int) -> str:
    total = model["model"] + sum(model["encoders"])  # bf16; float32 twice that
    if 2 * total + RAM_RESERVE <= ram_gb * GB:
        return "yes"
    return "bf16 only" if total + RAM_RESERVE <= ram_gb * GB else "no"


def doc_rows() -> list[str]:
    rows = [f"| {name} | {count:,} | {count * 2 / GB:.2f} GB | {count / GB:.2f} GB |" for name, count in flow_parts().items()]
    models = flow_models()
    for name, model in models.items():
        total = model["model"] + sum(model["encoders"])
        rows.append(f"| {name} | {total / GB:.1f} GB | " + " | ".join(ram_cell(model, ram) for ram in RAM_GB) + " |")
    for name, model in models.items():
        rows.append(f"| {name} | " + " | ".join(card_cell(model, card) for card in CARDS_GB) + " |")
    rows.append(f"{models['SD 3.5 large']['streamed'] / GB:.1f} GB for\nSD 3.5 large, {models['FLUX.1 dev']['streamed'] / GB:.1f} GB for FLUX.1 dev")
    return rows


def test_the_models_doc_tables_are_computed_from_the_manifests():
    doc = (ROOT / "docs" / "MODELS_FLOW.md").read_text()
    missing = [row for row in doc_rows() if row not in doc]
    assert missing == [], "docs/MODELS_FLOW.md lacks (or has other numbers than) these rows:\n" + "\n".join(missing)
