"""Choosing the device and the number format: the only place that asks what hardware exists."""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable, Iterable

import torch

from core.errors import UNAVAILABLE, EngineError

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# /proc/cpuinfo flags of the x86 units that multiply bf16 natively (Intel AMX on Sapphire Rapids
# and later, AVX512-BF16 on Cooper Lake, Zen 4 and later). Without them torch still runs bf16,
# converting to float32 around every multiply: slower than float32 itself.
NATIVE_BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise EngineError(f"unknown device {name!r} (use auto, cpu, cuda or mps)", "device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError("cuda was asked for, but torch sees no CUDA GPU", "device", UNAVAILABLE)
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EngineError("mps was asked for, but it is not available", "device", UNAVAILABLE)
    return torch.device(name)


def resolve_dtype(precision: str, device: torch.device,
                  cpu_flags_source: Callable[[], Iterable[str]] | None = None) -> torch.dtype:
    """auto: half precision on GPUs (twice as fast, half the memory); on the CPU bf16 where the
    processor multiplies it natively (about 5x the float32 rate on AMX), else float32, as fp16
    matmuls are slow or missing there. ``cpu_flags_source`` (default: ``cpu_flags``) tells the
    processor's flags, for tests."""
    if precision == "auto":
        if device.type != "cpu":
            return torch.float16
        return auto_cpu_dtype(frozenset((cpu_flags_source or cpu_flags)()))
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r} (use auto, fp32, fp16 or bf16)", "precision")
    return PRECISIONS[precision]


@functools.lru_cache(maxsize=None)
def auto_cpu_dtype(flags: frozenset[str]) -> torch.dtype:
    """The auto precision for a CPU with these flags; logged once per answer (cached)."""
    native = sorted(NATIVE_BF16_FLAGS.intersection(flags))
    if native:
        log.info("precision auto on the CPU: bf16 (the processor has %s)", ", ".join(native))
        return torch.bfloat16
    log.info("precision auto on the CPU: fp32 (no native bf16: neither %s)", " nor ".join(sorted(NATIVE_BF16_FLAGS)))
    return torch.float32


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The processor's feature flags as /proc/cpuinfo names them; where there is no
    /proc/cpuinfo (Windows, macOS), the native-bf16 flags torch's own CPU probes find."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    return frozenset(flag for flag, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)())


def available_memory(device: torch.device) -> int:
    """Bytes this process can still allocate on ``device`` before something fails: on a GPU what
    the driver reports free plus what torch's caching allocator holds reserved but unused, or
    on the CPU the least of the system's available memory, what the address-space limit
    (``ulimit -v``, RLIMIT_AS) leaves, and what a cgroup v2 memory limit leaves. The limits
    matter because MemAvailable describes the machine, not this process: a server run under a
    limit would otherwise plan for memory it may not take and be killed."""
    if device.type == "cuda":
        return cuda_memory_available(device)
    candidates = [_system_available()]
    address_space = _address_space_left()
    if address_space is not None:
        candidates.append(address_space)
    cgroup = cgroup_memory_left()
    if cgroup is not None:
        candidates.append(cgroup)
    return max(0, min(candidates))


def cuda_memory_available(device: torch.device) -> int:
    """The driver's free memory plus torch's reserved-but-unallocated blocks. After one job the
    caching allocator keeps the blocks it freed (the last decode's activations, say) reserved,
    so the driver reports them as taken although the next allocation reuses them: counting only
    the driver's figure would make VAE tiling plan smaller tiles after every job. Blocks in a
    CUDA graph's private pool (``--compile`` on CUDA) are counted too although only that graph
    reuses them: a small over-estimate, which the planners' budget fractions leave room for."""
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return free + max(0, cached)


def _system_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _address_space_left() -> int | None:
    """RLIMIT_AS minus the address space already mapped; None without a limit."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return soft - int(line.split()[1]) * 1024
    except OSError:
        pass
    return soft  # no /proc: the whole limit, an over-estimate but still a bound


def cgroup_memory_left(folder: str | None = None) -> int | None:
    """memory.max minus memory.current of a cgroup v2 folder (default: this process's), the
    reclaimable file cache counted as free; None when there is no such limit."""
    try:
        if folder is None:
            with open("/proc/self/cgroup") as f:
                entry = next((line.strip()[3:] for line in f if line.startswith("0::")), None)
            if entry is None:
                return None
            folder = os.path.join("/sys/fs/cgroup", entry.lstrip("/"))
        with open(os.path.join(folder, "memory.max")) as f:
            limit = f.read().strip()
        if limit == "max":
            return None
        with open(os.path.join(folder, "memory.current")) as f:
            current = int(f.read())
        reclaimable = 0
        try:
            with open(os.path.join(folder, "memory.stat")) as f:
                for line in f:
                    if line.startswith("inactive_file "):
                        reclaimable = int(line.split()[1])
        except OSError:
            pass
        return int(limit) - current + reclaimable
    except (OSError, ValueError):
        return None
