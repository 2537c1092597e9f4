"""Speed settings: on the CPU channels-last feature maps and convolution weights arranged for
oneDNN while sampling (``arranged_while_sampling``), and the opt-in ``torch.compile`` of the UNet
(``--compile``), with a fallback to eager execution. What each is worth is measured in docs/PERFORMANCE.md.

The module is compiled in place (``nn.Module.compile``), so its parameter names stay those of the
checkpoint and LoRA merging keeps finding them. Weights are not frozen into the compiled code
(inductor's ``freezing``): a LoRA merged later changes the weights in place, and frozen constants
would silently ignore it. Compiled code is cached on disk by inductor (its FX graph cache), in
``TORCHINDUCTOR_CACHE_DIR`` when set, so a second run with the same shapes skips most of the
compile time.

On CUDA the mode is "reduce-overhead" (``compile_mode``): inductor's kernels are recorded once
as a CUDA graph and replayed, so a step is one launch instead of the UNet's many hundred kernel
launches, whose cost on a fast card can rival the arithmetic itself at small latents and batch
sizes (not measured here: no GPU has been lent to the project, see docs/PERFORMANCE.md). The
UNet suits it: within a job every call has the same shapes (batch, latent size, context length).
What it costs: each new shape (another picture size or batch, a longer prompt's context) is a
compile (minutes for a full UNet without inductor's cache) and a recording, and every recorded
graph keeps its memory pool reserved on the card for as long as the process lives. A parameter
whose storage is swapped (a LoRA restored by assigning another tensor) is a changed static
address: its graph is recorded again on the next call (cudagraph trees do not count these
toward their re-record limit); weights changed in place are read by the replay as they are. A
graph's output is overwritten by the next replay: the engine's denoiser consumes the UNet's
output at once (``x - out * sigma``) and never holds it across calls, which is what that
requires. The CPU has no CUDA graphs: there the mode is inductor's default.

When no compiler can work (no C++ compiler for the CPU backend, no triton for CUDA), or torch
fails while compiling, a warning is logged and the module runs eagerly: same pictures, no speed-up.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import shutil
from contextlib import contextmanager

import torch

from core.devices import available_memory
from core.models.convolution import prepacked_bytes, release_packed_weights, use_prepacked_convolutions

log = logging.getLogger(__name__)

# The compilers inductor's CPU backend looks for (its cpp_builder), in its order.
CPP_COMPILERS = ("g++", "clang++", "c++")


def compiler_problem(device: torch.device) -> str | None:
    """Why inductor cannot compile for ``device``, or None when it has what it needs."""
    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    if device.type == "cuda":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (inductor needs it for CUDA)"
        return None
    if device.type != "cpu":
        return f"inductor does not compile for {device.type}"
    wanted = os.environ.get("CXX")
    candidates = (wanted,) if wanted else CPP_COMPILERS
    if not any(shutil.which(name) for name in candidates):
        return f"no C++ compiler found ({', '.join(candidates)}), which inductor needs on the CPU"
    return None


def compile_mode(device: torch.device) -> str:
    """torch.compile's mode for a module run on ``device``: CUDA graphs ("reduce-overhead") on
    CUDA, inductor's default elsewhere (see the module notes for why and what it costs)."""
    return "reduce-overhead" if device.type == "cuda" else "default"


def compile_module(module: torch.nn.Module, device: torch.device) -> bool:
    """Compile ``module``'s forward with inductor in ``compile_mode(device)``, in place. -> whether
    it will run compiled; False (with a logged warning) when no compiler works here. Errors while compiling a
    particular call fall back to eager code for that call, also with a warning (dynamo's
    ``suppress_errors``), so a job never fails because of the compiler."""
    problem = compiler_problem(device)
    if problem is not None:
        log.warning("--compile: %s; running without compiling", problem)
        return False
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    try:
        module.compile(backend="inductor", mode=compile_mode(device))
    except Exception as exc:  # noqa: BLE001 - any failure of the compiler means: run eagerly
        log.warning("--compile: torch.compile failed (%s); running without compiling", exc)
        return False
    return True


def prepare_for_speed(model, device: torch.device, compile: bool = False) -> None:
    """What the engine does to every model it loads. On a CPU the UNet's feature maps run
    channels-last (oneDNN's preferred layout: about 8% faster per step) and its convolutions
    may keep their weights arranged for oneDNN while sampling (``arranged_while_sampling``);
    with ``compile`` the UNet is compiled instead (or, without a working compiler, left as it
    is, arranged weights included)."""
    prepare_unet_for_speed(model.unet, device, compile)


def prepare_unet_for_speed(unet, device: torch.device, compile: bool = False) -> bool:
    """prepare_for_speed's work on one UNet (the benchmark times a bare UNet prepared so).
    -> whether it runs compiled."""
    compiled = compile_module(unet, device) if compile else False
    if device.type == "cpu" and hasattr(unet, "use_memory_format"):  # the UNets; transformers have no feature maps
        unet.use_memory_format(torch.channels_last)
        # Compiled code calls oneDNN its own way; the eager path's copies would only cost memory.
        use_prepacked_convolutions(unet, on=not compiled)
    return compiled


# What sampling must leave available besides the arranged copies (and never less than them).
MIN_MEMORY_LEFT = 2 * 2**30


@contextmanager
def arranged_while_sampling(*models):
    """The span in which the UNets of ``models`` (None entries skipped) may keep their
    convolution weights arranged for oneDNN (``core.models.convolution``; on only where
    prepare_for_speed switched it on: a CPU, not compiled). The copies cost memory (2.0 GB for
    SD 1.5 in float32), so they are made only when the memory still available after them is at
    least as much again and never under 2 GiB (the sampling's own activations, the picture's
    decode); short of that, sampling runs on the plain path, at the speed of channels-last alone.
    On leaving, every copy is freed: the VAE decode that follows gets the memory back, and the
    next sampling arranges the weights again after any extra network changed them."""
    sizes = {model.unet: prepacked_bytes(model.unet) for model in models if model is not None}
    unets = [unet for unet, size in sizes.items() if size]
    needed = sum(sizes.values())
    short = bool(unets) and available_memory(torch.device("cpu")) - needed < max(needed, MIN_MEMORY_LEFT)
    if short:
        log.info("not arranging convolution weights (%.1f GB): too little memory available", needed / 1e9)
        for unet in unets:
            use_prepacked_convolutions(unet, on=False)
    try:
        yield
    finally:
        for unet in unets:
            release_packed_weights(unet)
            if short:
                use_prepacked_convolutions(unet, on=True)
