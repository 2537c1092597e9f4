"""Choosing the device and the number format: the only place that asks what hardware exists."""
from __future__ import annotations

import torch

from core.errors import EngineError

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise EngineError(f"device: unknown device {name!r} (use auto, cpu, cuda or mps)")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError("device: cuda was asked for, but torch sees no CUDA GPU")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise EngineError("device: mps was asked for, but it is not available")
    return torch.device(name)


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """auto: half precision on GPUs (twice as fast, half the memory), fp32 on the CPU, where
    fp16 matmuls are slow or missing."""
    if precision == "auto":
        return torch.float32 if device.type == "cpu" else torch.float16
    if precision not in PRECISIONS:
        raise EngineError(f"precision: unknown precision {precision!r} (use auto, fp32, fp16 or bf16)")
    return PRECISIONS[precision]
