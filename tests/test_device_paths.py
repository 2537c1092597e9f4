"""The GPU-specific choices of core/speed.py and core/devices.py, decided and tested on the CPU:
the compile mode per device, and the memory VAE tiling plans with on a CUDA device (torch.cuda's
functions replaced, so no GPU is needed)."""
import torch

import core.devices
import core.speed
from core.devices import available_memory
from core.speed import compile_mode, compile_module

GIB = 2**30


def test_cuda_compiles_with_cuda_graphs_and_other_devices_with_inductors_default():
    assert compile_mode(torch.device("cuda")) == "reduce-overhead"
    assert compile_mode(torch.device("cuda:1")) == "reduce-overhead"
    assert compile_mode(torch.device("cpu")) == "default"
    assert compile_mode(torch.device("mps")) == "default"


def test_compile_module_passes_the_devices_mode_to_torch_compile(monkeypatch):
    calls = []
    monkeypatch.setattr(core.speed, "compiler_problem", lambda device: None)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **options: calls.append(options))
    layer = torch.nn.Linear(2, 2)
    assert compile_module(layer, torch.device("cuda")) is True
    assert compile_module(layer, torch.device("cpu")) is True
    assert calls == [{"backend": "inductor", "mode": "reduce-overhead"}, {"backend": "inductor", "mode": "default"}]


def fake_cuda(monkeypatch, free: int, reserved: int, allocated: int) -> list:
    asked = []

    def mem_get_info(device):
        asked.append(device)
        return free, 80 * GIB

    monkeypatch.setattr(core.devices.torch.cuda, "mem_get_info", mem_get_info)
    monkeypatch.setattr(core.devices.torch.cuda, "memory_reserved", lambda device: reserved)
    monkeypatch.setattr(core.devices.torch.cuda, "memory_allocated", lambda device: allocated)
    return asked


def test_cuda_memory_counts_blocks_torch_holds_reserved_but_unused(monkeypatch):
    asked = fake_cuda(monkeypatch, free=10 * GIB, reserved=30 * GIB, allocated=12 * GIB)
    assert available_memory(torch.device("cuda:0")) == 10 * GIB + 18 * GIB
    assert asked == [torch.device("cuda:0")]


def test_cuda_memory_is_the_drivers_figure_when_torch_caches_nothing(monkeypatch):
    fake_cuda(monkeypatch, free=7 * GIB, reserved=5 * GIB, allocated=5 * GIB)
    assert available_memory(torch.device("cuda")) == 7 * GIB


def test_cuda_memory_never_subtracts_when_allocated_reads_above_reserved(monkeypatch):
    # The two counters are read one after the other; another thread may allocate in between.
    fake_cuda(monkeypatch, free=3 * GIB, reserved=4 * GIB, allocated=4 * GIB + 1)
    assert available_memory(torch.device("cuda")) == 3 * GIB


def test_vae_attention_rows_are_dense_so_sdpa_can_take_a_fused_kernel(monkeypatch):
    """A transposed (strided) last dimension sends scaled_dot_product_attention to its math
    kernel, which holds the whole score matrix; the VAE's mid-block attention must not."""
    from core.models import vae

    seen = []

    def recording_attention(q, k, v, budget=None, budget_fraction=0.25):
        seen.append([t.stride(-1) for t in (q, k, v)])
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    monkeypatch.setattr(vae, "chunked_attention", recording_attention)
    block = vae.AttnBlock(32).eval()
    with torch.no_grad():
        block(torch.randn(1, 32, 4, 6))
    assert seen == [[1, 1, 1]]
