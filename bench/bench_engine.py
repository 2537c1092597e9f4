"""Speed and memory of the engine against diffusers, measured in the same run on this machine.

    python bench/bench_engine.py            # everything below but the flag-gated parts
    python bench/bench_engine.py --quick    # a few minutes: steps at 256x256, a 4-step 256x256 txt2img, nothing else
    python bench/bench_engine.py --device cuda [--compile]   # on a GPU: whole txt2img ours vs diffusers (7 below)

First line: torch, threads, the CPU's name and whether it has native bf16 (AMX or AVX512-BF16).

0. With --roofline (and nothing else, seconds): the arithmetic of one SD 1.5 UNet CFG step and
   one 512x512 VAE decode, counted by torch's FlopCounterMode on the meta device, and the float32
   rates this machine's kernels reach (a 4096x2048x2048 matrix multiply; SD 1.5's top-level 3x3
   convolution with its weights arranged, as the engine samples): the least time each can take.
   The step lines of 1 print each variant's achieved GFLOP/s against the same count.

1. One CFG step of the full-size SD 1.5 UNet (random weights, batch 2 = cond + uncond,
   512x512 image = 64x64 latent), best of 3 after a warm-up call: ours (channels-last, as the
   engine runs it on a CPU, in a process with huge pages for large tensors as launch.py sets
   up: core/allocation.py) and diffusers as it comes in float32 and bfloat16, and diffusers
   float32 channels-last with huge pages; with --compile also both compiled by torch.compile (inductor; the warm-up,
   which compiles, is printed). Seconds per step, the speed-up over diffusers float32, peak RSS.
2. A whole 20-step 512x512 txt2img (--txt2img-steps): full-size SD 1.5 layout with random
   weights, prompt and negative prompt encoded, Euler, CFG 7, VAE decode, PIL picture; ours
   (with a live preview made at every step, as the page shows them) against diffusers'
   StableDiffusionPipeline, each in the precision that was faster for it in 1 (each one's best
   setting on this machine); compiled too with --compile (a first untimed job compiles).
   A third run gives diffusers what ours has, by hand: its UNet and VAE channels-last, in a
   process with huge pages for large tensors (--skip-tuned-diffusers leaves it out).
   Best of --txt2img-repeats (2) fresh processes per side. --skip-txt2img leaves it out.
   --txt2img-sdxl (and nothing else): the same at 1024x1024 with the SDXL base layout against
   StableDiffusionXLPipeline, both in bfloat16 (slow: about an hour per side on 2 cores).
3. Loading a full-size SD 1.5 single-file checkpoint (random weights, written once to a temp
   folder) and reading every weight once: peak RSS growth, as a ratio of the file size.
   Skipped with --skip-load.
4. A 4096x4096 decode through the SD 1.5-size VAE (random weights), tiled automatically:
   seconds and peak RSS (must fit in this machine's 24 GiB). Skipped with --skip-vae4k.
   Then a 2048x2048 decode through the same VAE in a process whose address space is limited
   to 12 GB (RLIMIT_AS; its whole-picture attention alone would be 16 GiB): seconds, peak RSS
   and the tiles/attention blocks chosen from that limit. Skipped with --skip-vae2k;
   --vae2k-only runs only this one.
5. With --sdxl: one CFG step (batch 2) of the full-size SDXL base UNet (2.57B parameters, random
   weights, shapes from sdxl_base.json) at 1024x1024 (128x128 latent), ours vs diffusers, with
   the added size/pooled vector: seconds and peak RSS. --sdxl-dtype bfloat16 halves the memory
   (about 10.3 GB of float32 weights per process otherwise). --sdxl-only skips the rest.
6. With --sdxl-txt2img (and nothing else): one whole SDXL txt2img at 1024x1024 through our
   pipeline: the full-size base model (UNet, VAE, CLIP-L and OpenCLIP bigG text encoders; random
   weights in the real shapes of sdxl_base.json, built by the loader's build_model), prompt and
   negative prompt encoded, 2 Euler steps with CFG (--sdxl-txt2img-steps), VAE decode (tiled
   if it would not fit). Prints seconds (building, text + sampling, decode), peak RSS and
   whether it fits in 24 GiB. Needs about 15 GB of memory in float32 (--sdxl-dtype bfloat16:
   about half) and many CPU minutes. --sdxl-txt2img-shapes FILE and --sdxl-txt2img-size N run
   the same code on another manifest (a tiny one, as tests/test_bench.py does).

7. With --device cuda (and nothing else): the whole txt2img of 2 (prompt and negative prompt,
   --txt2img-steps Euler steps, CFG 7, VAE decode, PIL picture), ours against diffusers, SD 1.5
   at 512x512 and SDXL base at 1024x1024, random weights in the real shapes built directly on
   the GPU in fp16 (and bf16 where torch.cuda.is_bf16_supported()); with --compile each also
   compiled (CUDA graphs: core/speed.py). Each variant in a fresh process, timed after one
   untimed warm-up job. Prints the card's name, torch and CUDA versions, then per variant the
   total seconds, sampling it/s (steps 2 to N, between CUDA events at the steps' ends), peak GPU
   memory (torch.cuda.max_memory_allocated) and the ratios ours/diffusers. --device cpu runs
   the same code on the CPU; --device-sd15-folder / --device-sdxl-folder (diffusers folders),
   --device-size, --device-dtypes and --device-families make it small enough for tests.

8. With --flow (and nothing else; bench/bench_flow.py): one transformer step of SD 3.5 medium
   (MMDiT, CFG batch 2) and FLUX.1 dev (batch 1 with its guidance input), ours against diffusers'
   SD3Transformer2DModel / FluxTransformer2DModel holding the same random weights (converted by
   diffusers' single-file converters), at 512x512 (--flow-latent), in bfloat16 and float32
   (--flow-dtypes): full width, depth cut (--flow-sd3-depth, --flow-flux-depth) so that the whole
   part takes minutes on a CPU without native bf16, the full-depth figure estimated from the
   per-block one. Best of --flow-repeats (float32) / --flow-bf16-repeats (bfloat16) calls per
   variant, each in a fresh process: s/step, ratio ours/diffusers, peak RSS while stepping.
   --flow-tiny runs the same code on narrow layouts (tests/test_bench.py).

Each measurement runs in a fresh subprocess so that peak RSS belongs to that measurement alone.
Prints ratios against the reference measured in the same run (diffusers float32; ours / diffusers
in each precision; load RSS / file size). Targets: the whole txt2img at least 1.2x as fast as
diffusers float32 on a CPU without native bf16 (3x on one with it); memory ratios <= 1.0, load
ratio < 1.5, except that on a CPU ours holds its convolution weights arranged for oneDNN while
sampling when memory allows (about 2 GB more for SD 1.5 in float32: docs/PERFORMANCE.md). The
machine's load average is printed with each part: timings on a busy machine are not comparable.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from core.allocation import HUGE_PAGES_VARIABLE  # noqa: E402  (standard library only)
REFERENCE = ROOT / "tests" / "reference" / "sd15.json"
SDXL_REFERENCE = ROOT / "tests" / "reference" / "sdxl_base.json"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def sd15_shapes() -> dict:
    return {k: tuple(v) for k, v in json.loads(REFERENCE.read_text())["tensors"].items()}


def build_ours():
    import torch

    from core.models.detection import detect
    from core.models.unet import UNetModel

    spec = detect(sd15_shapes())
    torch.manual_seed(0)
    return UNetModel(spec.unet).eval(), spec.unet.context_dim


def build_diffusers():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, cross_attention_dim=768, attention_head_dim=8,
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    ).eval()
    return unet, 768


def build_ours_sdxl():
    import torch

    from core.models.detection import detect
    from core.models.unet import UNetModel

    shapes = {k: tuple(v) for k, v in json.loads(SDXL_REFERENCE.read_text())["tensors"].items()}
    spec = detect(shapes)
    torch.manual_seed(0)
    return UNetModel(spec.unet).eval(), spec.unet.context_dim


def build_diffusers_sdxl():
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    ).eval()
    return unet, 2048


def measure_sdxl_step(which: str, latent: int, dtype_name: str) -> dict:
    """One forward of batch 2 (cond + uncond) with the added vector: no warm-up (a step takes
    minutes on a small CPU; the first call's set-up cost is a small part of it)."""
    import torch

    torch.set_grad_enabled(False)
    dtype = getattr(torch, dtype_name)
    start = time.perf_counter()
    unet, context_dim = build_ours_sdxl() if which == "ours" else build_diffusers_sdxl()
    unet = unet.to(dtype)
    built = time.perf_counter() - start
    x = torch.randn(2, 4, latent, latent, dtype=dtype)
    t = torch.tensor([500.0, 500.0])
    context = torch.randn(2, 77, context_dim, dtype=dtype)
    pooled = torch.randn(2, 1280, dtype=dtype)
    time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024]] * 2)
    if which == "ours":
        from core.models.unet import timestep_embedding

        y = torch.cat([pooled, timestep_embedding(time_ids.reshape(-1), 256).reshape(2, -1).to(dtype)], dim=1)
        call = lambda: unet(x, t, context, y)  # noqa: E731
    else:
        extra = {"text_embeds": pooled, "time_ids": time_ids.to(dtype)}
        call = lambda: unet(x, t, encoder_hidden_states=context, added_cond_kwargs=extra).sample  # noqa: E731
    start = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "build_seconds": built, "peak_rss_mb": peak_rss_mb(), "finite": bool(torch.isfinite(out).all())}


def cpu_description() -> dict:
    """The processor's name and whether it has native bf16 arithmetic (AMX or AVX512-BF16)."""
    import torch

    name, flags = "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name == "unknown CPU":
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return {"name": name, "bf16_flags": native, "threads": torch.get_num_threads(),
            "onednn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}


def prepare_unet(unet, which: str, compiled: bool, channels_last: bool):
    """Our UNet as the engine runs it (core.speed.prepare_for_speed's layout), or diffusers'
    with channels_last when asked; compiled with torch.compile (inductor) when asked."""
    import torch

    from core.speed import compile_module, prepare_unet_for_speed

    if which == "ours":
        if channels_last:
            if compiled != prepare_unet_for_speed(unet, torch.device("cpu"), compiled):
                raise SystemExit("no compiler works here")
            return unet
    elif channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    if compiled and not compile_module(unet, torch.device("cpu")):
        raise SystemExit("no compiler works here")
    return unet


def measure_step(which: str, latent: int, repeats: int, dtype_name: str = "float32", compiled: bool = False,
                 channels_last: bool = True) -> dict:
    """One CFG step (batch 2) of the SD 1.5-size UNet: best of ``repeats`` timed calls after a
    warm-up call (which, compiled, includes the compile: reported as warmup_seconds)."""
    import torch

    torch.set_grad_enabled(False)
    dtype = getattr(torch, dtype_name)
    unet, context_dim = build_ours() if which == "ours" else build_diffusers()
    unet = prepare_unet(unet.to(dtype), which, compiled, channels_last)
    x = torch.randn(2, 4, latent, latent, dtype=dtype)
    if channels_last and which == "diffusers":
        x = x.to(memory_format=torch.channels_last)
    t = torch.tensor([500.0, 500.0])
    context = torch.randn(2, 77, context_dim, dtype=dtype)
    call = (lambda: unet(x, t, context)) if which == "ours" else (lambda: unet(x, t, encoder_hidden_states=context).sample)
    start = time.perf_counter()
    call()  # warm-up: allocator, kernels (and the compile)
    warmup = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "warmup_seconds": warmup, "peak_rss_mb": peak_rss_mb()}


# FlopCounterMode's operators as the networks use them (attention is counted through its two matmuls).
OPERATOR_ROLES = {"convolution": "convolutions", "addmm": "linear layers with bias", "mm": "linear layers without bias",
                  "bmm": "attention"}


def counted_gflop(build, *inputs) -> dict:
    """The arithmetic of one call, by operator, counted by torch's FlopCounterMode on the meta
    device (a full-size network without memory or time): {"total": GFLOP, op name: GFLOP}."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"), torch.no_grad():
        module, arguments = build(), [torch.empty(shape) if isinstance(shape, tuple) else shape for shape in inputs]
        counter = FlopCounterMode(display=False)
        with counter:
            module(*arguments)
    counts = {str(op).removeprefix("aten."): n / 1e9 for op, n in counter.get_flop_counts()["Global"].items()}
    return {"total": counter.get_total_flops() / 1e9, **counts}


def sd15_step_gflop(latent: int) -> dict:
    """One CFG step (batch 2) of the SD 1.5-size UNet at a ``latent`` x ``latent`` latent."""
    import torch

    def build():
        unet, _ = build_ours()
        return lambda x, t, context: unet(x, t, context)

    return counted_gflop(build, (2, 4, latent, latent), torch.full((2,), 500.0, device="meta"), (2, 77, 768))


def sd15_decode_gflop(latent: int) -> dict:
    """The SD 1.5-size VAE's decode of one ``latent`` x ``latent`` latent."""
    from core.models.detection import detect_vae
    from core.models.vae import AutoencoderKL

    return counted_gflop(lambda: AutoencoderKL(detect_vae(sd15_shapes())).decode, (1, 4, latent, latent))


def machine_rates(repeats: int = 10) -> dict:
    """What this machine's float32 kernels reach, in GFLOP/s (best of ``repeats``): a large matrix
    multiply, and a 3x3 convolution of SD 1.5's top level (320 -> 320 channels at 64x64, batch 2)
    through the UNet's own Conv2d with its weights arranged for oneDNN, as the engine samples."""
    import torch

    from core.models.convolution import Conv2d, use_prepacked_convolutions

    def best(call) -> float:
        call()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
        return min(times)

    torch.manual_seed(0)
    with torch.no_grad():
        a, b = torch.randn(4096, 2048), torch.randn(2048, 2048)
        matmul = 2 * 4096 * 2048 * 2048 / best(lambda: a @ b) / 1e9
        conv = Conv2d(320, 320, 3, padding=1).eval()
        use_prepacked_convolutions(conv, True)
        x = torch.randn(2, 320, 64, 64).contiguous(memory_format=torch.channels_last)
        convolution = 2 * 9 * 320 * 320 * 64 * 64 * 2 / best(lambda: conv(x)) / 1e9
    return {"matmul_gflops": matmul, "convolution_gflops": convolution}


def report_roofline(latent: int = 64) -> dict:
    """The least time a step and a decode can take on this machine in float32: their counted
    arithmetic over the rates its kernels reach. A measured step near that bound has nothing left
    to win but arithmetic (precision, fewer operations); far from it, the kernels are fed badly."""
    import torch

    rates = in_subprocess("--_rates")  # in the engine's process setting: huge pages, as the steps run
    step, decode = sd15_step_gflop(latent), sd15_decode_gflop(latent)
    print(f"Roofline, float32, {torch.get_num_threads()} threads: matrix multiply 4096x2048x2048 {rates['matmul_gflops']:.0f} GFLOP/s; "
          f"3x3 convolution 320->320 at 64x64 (batch 2, weights arranged) {rates['convolution_gflops']:.0f} GFLOP/s")
    for label, counts in ((f"UNet step (SD 1.5 size, batch 2, latent {latent}x{latent})", step),
                          (f"VAE decode ({latent * 8}x{latent * 8})", decode)):
        parts = ", ".join(f"{OPERATOR_ROLES.get(op, op)} {n:.1f}" for op, n in counts.items() if op != "total")
        convolutions = counts.get("convolution", 0.0)
        least = convolutions / rates["convolution_gflops"] + (counts["total"] - convolutions) / rates["matmul_gflops"]
        print(f"  {label}: {counts['total']:.1f} GFLOP ({parts}): at least {least:.2f} s "
              f"(convolutions at the convolution rate, the rest at the matmul rate)")
    return {"rates": rates, "step_gflop": step, "decode_gflop": decode}


def write_checkpoint(path: Path, dtype_name: str) -> None:
    import torch
    from safetensors.torch import save_file

    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(0)
    tensors = {k: (torch.randn(s, generator=generator) * 0.02).to(dtype) for k, s in sd15_shapes().items()}
    save_file(tensors, path)


def measure_load(path: str, dtype_name: str) -> dict:
    import torch

    from core.loading import load_model

    before = current_rss_mb()
    start = time.perf_counter()
    model = load_model(path, dtype=getattr(torch, dtype_name))
    # Mapped weights are read lazily: touch every one, as the first generation would.
    params = 0
    with torch.no_grad():
        for p in model.parameters():
            p.sum()
            params += p.numel()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak_rss_mb(), "params": params}


def measure_vae_4k(size: int) -> dict:
    import torch

    from core.models.detection import detect_vae
    from core.models.vae import AutoencoderKL
    from core.pipelines.common import decode_latents

    torch.manual_seed(0)
    vae = AutoencoderKL(detect_vae(sd15_shapes())).eval()
    latents = torch.randn(1, 4, size // 8, size // 8)
    start = time.perf_counter()
    images = decode_latents(vae, latents)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "shape": list(images.shape)}


VAE_LIMIT_BYTES = 12 * 10**9  # as tests/test_security_limits.py


def measure_vae_limited(size: int, limit: int) -> dict:
    """A ``size`` x ``size`` decode (SD 1.5-size VAE, random weights) with the address space
    limited to ``limit`` bytes: what decode_latents plans from that limit, and its peak RSS."""
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import torch

    from core.devices import available_memory
    from core.models.detection import detect_vae
    from core.models.vae import AutoencoderKL
    from core.pipelines import vae_tiling
    from core.pipelines.common import decode_latents

    torch.manual_seed(0)
    vae = AutoencoderKL(detect_vae(sd15_shapes())).eval()
    latents = torch.randn(1, 4, size // 8, size // 8)
    cpu = torch.device("cpu")
    free = available_memory(cpu)
    tiled = vae_tiling.needs_tiling(vae, size * size, cpu)
    start = time.perf_counter()
    images = decode_latents(vae, latents)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "shape": list(images.shape),
            "free_mb": free / 2**20, "tile": vae_tiling.tile_size(vae, cpu) if tiled else None,
            "finite": bool(torch.isfinite(images).all())}


def report_vae_limited(size: int = 2048, limit: int = VAE_LIMIT_BYTES) -> dict:
    r = in_subprocess("--_vae_limited", str(size), str(limit))
    plan = f"tiles of {r['tile']} latent pixels" if r["tile"] else "one piece"
    print(f"VAE decode {size}x{size} (SD 1.5-size VAE) under a {limit / 1e9:.0f} GB address-space limit "
          f"({r['free_mb']:.0f} MB free to plan with: {plan}): {r['seconds']:.0f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
          f"({r['peak_rss_mb'] * 2**20 / limit:.2f} of the limit), finite output: {r['finite']}")
    return r


def random_weights(shapes: dict, dtype, device="cpu") -> dict:
    """Random tensors for a checkpoint layout: normalisation scales (the only 1-D ``.weight``
    tensors: group and layer norms) 1, everything else N(0, 0.02), so activations stay in range
    through dozens of layers; drawn in float32 and converted one by one, on ``device`` (a GPU
    run never holds the weights in host memory)."""
    import torch

    generator = torch.Generator(device=device).manual_seed(0)
    tensors = {}
    for key, shape in shapes.items():
        if key.endswith(".weight") and len(shape) == 1:
            value = torch.ones(shape, device=device)
        else:
            value = torch.randn(shape, generator=generator, device=device) * 0.02
        tensors[key] = value.to(dtype)
    return tensors


def measure_sdxl_txt2img(shapes_file: str, size: int, steps: int, dtype_name: str) -> dict:
    """A whole txt2img of ``size`` x ``size`` with a model of the layout in ``shapes_file``
    (SDXL base): build, encode both prompts, ``steps`` Euler steps with CFG (batch 2), decode."""
    import torch

    from core.conditioning import make_conditioner
    from core.loading import build_model, normalise_keys
    from core.models.detection import detect
    from core.params import GenerationParams
    from core.pipelines.common import decode_latents, to_pil
    from core.pipelines.sampling_run import sample_latents
    from core.text.tokenizer import load_clip_tokenizer

    torch.set_grad_enabled(False)
    dtype = getattr(torch, dtype_name)
    shapes = normalise_keys({k: tuple(v) for k, v in json.loads(Path(shapes_file).read_text())["tensors"].items()})
    start = time.perf_counter()
    spec = detect(shapes)
    model = build_model(normalise_keys(random_weights(shapes, dtype)), spec, dtype=dtype, name=Path(shapes_file).name)
    parameters = sum(p.numel() for p in model.parameters())
    conditioner = make_conditioner(model, load_clip_tokenizer())
    built = time.perf_counter() - start
    params = GenerationParams(prompt="a photograph of an astronaut riding a horse on the moon, detailed",
                              negative_prompt="blurry, low quality", steps=steps, cfg_scale=7.0, width=size,
                              height=size, sampler="Euler", seed=1)
    start = time.perf_counter()
    latents = sample_latents(model, conditioner, params, [1])
    sampled = time.perf_counter() - start
    start = time.perf_counter()
    images = decode_latents(model.vae, latents)
    image = to_pil(images)[0]
    decoded = time.perf_counter() - start
    return {
        "family": spec.family, "parameters": parameters, "build_seconds": built, "sample_seconds": sampled,
        "decode_seconds": decoded, "seconds": sampled + decoded, "peak_rss_mb": peak_rss_mb(),
        "size": list(image.size), "finite": bool(torch.isfinite(latents).all()),
    }


def report_sdxl_txt2img(shapes_file: str, size: int, steps: int, dtype_name: str) -> dict:
    r = in_subprocess("--_sdxl_txt2img", shapes_file, str(size), str(steps), dtype_name)
    gib = r["peak_rss_mb"] / 1024
    print(f"txt2img {r['size'][0]}x{r['size'][1]}: {r['family']} ({r['parameters'] / 1e9:.2f}B parameters, random weights, "
          f"{Path(shapes_file).name}), {dtype_name}, {steps} Euler step{'s' if steps != 1 else ''} with CFG, CPU")
    print(f"  {r['seconds']:.1f} s (text + sampling {r['sample_seconds']:.1f} s, decode {r['decode_seconds']:.1f} s; "
          f"building the model {r['build_seconds']:.1f} s before that), finite latents: {r['finite']}")
    print(f"  peak RSS {r['peak_rss_mb']:.0f} MB = {gib:.1f} GiB: {'fits' if gib <= 24 else 'does NOT fit'} in 24 GiB")
    return r


PROMPT = "a photograph of an astronaut riding a horse on the moon, detailed"
NEGATIVE = "blurry, low quality"


def build_ours_txt2img(family: str, dtype, compiled: bool, device="cpu", folder: str | None = None):
    """Our model of the full-size layout (random weights), built on ``device`` and prepared as
    the engine prepares it there; with ``folder`` (a diffusers folder, as tests/tiny_models.py
    writes) the layout of that folder's weights instead."""
    import torch

    from core.speed import prepare_for_speed
    from core.conditioning import make_conditioner
    from core.loading import build_model, normalise_keys, read_checkpoint
    from core.models.detection import detect
    from core.text.tokenizer import load_clip_tokenizer

    device = torch.device(device)
    if folder is None:
        reference = REFERENCE if family == "sd15" else SDXL_REFERENCE
        shapes = normalise_keys({k: tuple(v) for k, v in json.loads(reference.read_text())["tensors"].items()})
        metadata, name = {}, reference.name
    else:
        tensors, metadata = read_checkpoint(Path(folder))
        shapes, name = {k: tuple(v.shape) for k, v in tensors.items()}, Path(folder).name
        del tensors
    model = build_model(normalise_keys(random_weights(shapes, dtype, device)), detect(shapes, metadata), device=device,
                        dtype=dtype, name=name)
    prepare_for_speed(model, device, compiled)
    return model, make_conditioner(model, load_clip_tokenizer())


def run_ours_txt2img(model, conditioner, size: int, steps: int, previews: bool, on_step=None) -> tuple[object, int]:
    """One whole job as the engine runs it: prompts encoded, Euler with CFG 7, VAE decode, PIL
    picture; with ``previews`` a live preview picture is made at every step, as the page's.
    ``on_step()`` is called at the end of every sampling step."""
    from app.preview import latent_preview
    from core.params import GenerationParams
    from core.pipelines.common import decode_latents, to_pil
    from core.pipelines.sampling_run import sample_latents

    params = GenerationParams(prompt=PROMPT, negative_prompt=NEGATIVE, steps=steps, cfg_scale=7.0, width=size,
                              height=size, sampler="Euler", seed=1)
    made = []

    def each_step(step, sigma, x, denoised):
        if previews:
            made.append(latent_preview(denoised, model.spec.latent_format))
        if on_step is not None:
            on_step()

    latents = sample_latents(model, conditioner, params, [1], each_step if previews or on_step else None)
    return to_pil(decode_latents(model.vae, latents))[0], len(made)


def diffusers_vae(size: int, scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=size,
        scaling_factor=scaling_factor,
    )


def clip_config(hidden: int, layers: int, heads: int, activation: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
                          num_attention_heads=heads, max_position_embeddings=77, hidden_act=activation, projection_dim=hidden,
                          bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


@contextlib.contextmanager
def built_on(device, dtype):
    """Modules constructed inside are made directly on ``device`` in ``dtype``: a full-size SDXL
    in float32 on the host first would take about 14 GB of host memory for a GPU run."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def full_size_diffusers_parts(family: str) -> dict:
    """diffusers' UNet, VAE and text encoders of the full-size layout, its own random initialisation."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    parts = {"text_encoder": CLIPTextModel(clip_config(768, 12, 12, "quick_gelu"))}
    if family == "sd15":
        parts.update(unet=build_diffusers()[0], vae=diffusers_vae(512, 0.18215))
    else:
        parts.update(unet=build_diffusers_sdxl()[0], vae=diffusers_vae(1024, 0.13025),
                     text_encoder_2=CLIPTextModelWithProjection(clip_config(1280, 32, 20, "gelu")))
    return parts


def folder_diffusers_parts(family: str, folder: Path) -> dict:
    """The same parts in the configurations of a diffusers folder (tiny ones, for tests), random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    parts = {
        "unet": UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
        "vae": AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
        "text_encoder": CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder")),
    }
    if family == "sdxl":
        parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
    return parts


def build_diffusers_txt2img(family: str, dtype, compiled: bool, channels_last: bool = False, device="cpu",
                            folder: str | None = None):
    """diffusers' pipeline of the same size (its own random initialisation), Euler as ours,
    built on ``device``; with ``folder`` in that diffusers folder's configurations; with
    ``channels_last`` its UNet and VAE made channels-last by hand (diffusers' own advice)."""
    import torch
    from diffusers import EulerDiscreteScheduler

    from core.text.tokenizer import load_clip_tokenizer

    device = torch.device(device)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="linspace")
    with built_on(device, dtype):
        torch.manual_seed(0)
        parts = full_size_diffusers_parts(family) if folder is None else folder_diffusers_parts(family, Path(folder))
    tokenizer = load_clip_tokenizer().hf
    if family == "sd15":
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(**parts, tokenizer=tokenizer, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    else:
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(**parts, tokenizer=tokenizer, tokenizer_2=load_clip_tokenizer(pad_with_eos=False).hf,
                                         scheduler=scheduler)
        # Decode in the run's precision, as ours does: diffusers would otherwise copy its VAE to
        # float32 before every fp16 decode. Ours decodes again in float32 only after an overflow,
        # which these random weights do not cause; the released SDXL VAE's do in fp16, so with
        # real weights both sides pay a float32 decode (ours after a wasted fp16 one).
        pipe.vae.register_to_config(force_upcast=False)
    pipe = pipe.to(device=device, dtype=dtype)
    if channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    pipe.set_progress_bar_config(disable=True)
    if compiled:
        from core.speed import compile_module

        if not compile_module(pipe.unet, device):
            raise SystemExit("no compiler works here")
    return pipe


class StepClock:
    """When each sampling step ended, on the device's clock: CUDA events on a GPU (recorded into
    the stream, so the timing does not stall it), perf_counter on the CPU (which runs in order)."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def tick(self) -> None:
        import torch

        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def steps_per_second(self) -> float | None:
        """Steps 2 to N over the time from the end of the first to the end of the last (the first
        step can carry one-off work: text encoding left to the first call, kernels chosen);
        None with fewer than 2 steps."""
        if len(self.marks) < 2:
            return None
        if self.cuda:
            self.marks[-1].synchronize()
            seconds = self.marks[0].elapsed_time(self.marks[-1]) / 1000
        else:
            seconds = self.marks[-1] - self.marks[0]
        return (len(self.marks) - 1) / seconds


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_txt2img(which: str, family: str, size: int, steps: int, dtype_name: str, compiled: bool, previews: bool,
                    device_name: str = "cpu", folder: str | None = None, warm_up: bool | None = None) -> dict:
    """A whole ``size`` x ``size`` txt2img (prompt and negative prompt encoded, ``steps`` Euler
    steps with CFG 7, VAE decode, PIL picture) with a full-size model of random weights (with
    ``folder``: of that diffusers folder's layout) on ``device_name``. With ``warm_up`` (default:
    when ``compiled``) a first job of the same shape runs untimed (compiled, it compiles); the
    build is not timed. Peak memory: torch's peak allocation on a GPU, peak RSS on the CPU.
    ``which``: "ours", "diffusers" (as it comes) or "diffusers-tuned" (channels-last)."""
    import torch

    torch.set_grad_enabled(False)
    dtype = getattr(torch, dtype_name)
    device = torch.device(device_name)
    start = time.perf_counter()
    if which == "ours":
        model, conditioner = build_ours_txt2img(family, dtype, compiled, device, folder)

        def job(clock):
            conditioner.cache.clear()  # the text encoding belongs to the timed job
            return run_ours_txt2img(model, conditioner, size, steps, previews, clock.tick)
    else:
        pipe = build_diffusers_txt2img(family, dtype, compiled, which == "diffusers-tuned", device, folder)

        def job(clock):
            def step_ended(pipe, step, timestep, tensors):
                clock.tick()
                return tensors

            out = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=7.0, width=size,
                       height=size, generator=torch.Generator().manual_seed(1), output_type="pil",
                       callback_on_step_end=step_ended)
            return out.images[0], 0
    synchronize(device)
    built = time.perf_counter() - start
    warmup = None
    if compiled if warm_up is None else warm_up:
        start = time.perf_counter()
        job(StepClock(device))
        synchronize(device)
        warmup = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = StepClock(device)
    synchronize(device)
    start = time.perf_counter()
    image, previews_made = job(clock)
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mb()
    return {"seconds": seconds, "build_seconds": built, "warmup_seconds": warmup, "peak_rss_mb": peak_rss_mb(),
            "peak_memory_mb": peak, "steps_per_second": clock.steps_per_second(), "steps_timed": len(clock.marks),
            "size": list(image.size), "previews": previews_made}


def in_subprocess(*args: str, huge_pages: bool = True) -> dict:
    """Run this script with ``args`` in a fresh process -> the JSON of its last line. The process
    gets the engine's allocation setting (launch.py's: core/allocation.py) with ``huge_pages``,
    and torch's default without, whatever this process's environment says."""
    env = {**os.environ, HUGE_PAGES_VARIABLE: "1" if huge_pages else "0"}
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def in_subprocess_or_report(label: str, *args: str, huge_pages: bool = True) -> dict | None:
    """in_subprocess's answer, or None after printing "  <label> failed: <the error's last line>"
    (out of memory, a compiler error), so that the other variants of a report still run."""
    try:
        return in_subprocess(*args, huge_pages=huge_pages)
    except subprocess.CalledProcessError as exc:
        reason = exc.stderr.strip().splitlines()[-1] if exc.stderr and exc.stderr.strip() else str(exc)
        print(f"  {label} failed: {reason}")
        return None


# (which, dtype, compiled, channels_last) of the UNet step variants; ours runs as the engine runs it
# on a CPU (channels-last, huge pages), diffusers as it comes (channels-first, torch's default
# allocation) and, for comparison, tuned as ours is: channels-last in a process with huge pages.
STEP_VARIANTS = [("ours", "float32", False, True), ("diffusers", "float32", False, False),
                 ("ours", "bfloat16", False, True), ("diffusers", "bfloat16", False, False),
                 ("diffusers", "float32", False, True)]
COMPILED_VARIANTS = [("ours", "float32", True, True), ("diffusers", "float32", True, False)]


def variant_name(which: str, dtype_name: str, compiled: bool, channels_last: bool) -> str:
    layout = ", channels_last + huge pages" if channels_last and which == "diffusers" else ""
    return f"{which} {dtype_name}{', compiled' if compiled else ''}{layout}"


def report_unet_steps(latent: int, repeats: int, compiled: bool, skip: tuple[str, ...] = ()) -> dict:
    """Each variant in a fresh process; ratios against diffusers float32 measured in this run."""
    print(f"UNet step: SD 1.5 size, batch 2 (CFG), latent {latent}x{latent} ({latent * 8}x{latent * 8} image), "
          f"best of {repeats} after a warm-up call, each in a fresh process; load {os.getloadavg()[0]:.1f}")
    results = {}
    for variant in STEP_VARIANTS + (COMPILED_VARIANTS if compiled else []):
        which, dtype_name, compile_it, channels_last = variant
        if dtype_name in skip:
            continue
        try:
            results[variant] = in_subprocess("--_step", which, str(latent), str(repeats), dtype_name, str(int(compile_it)),
                                             str(int(channels_last)), huge_pages=channels_last)
        except subprocess.CalledProcessError as exc:
            print(f"  {variant_name(*variant):40s} failed: {exc.stderr.strip().splitlines()[-1] if exc.stderr else exc}")
    reference = results[("diffusers", "float32", False, False)]["seconds"]
    arithmetic = sd15_step_gflop(latent)["total"]  # the same network on both sides
    for variant, r in results.items():
        warmup = f", warm-up {r['warmup_seconds']:.0f} s (compile)" if variant[2] else ""
        print(f"  {variant_name(*variant):40s} {r['seconds']:7.2f} s/step  {reference / r['seconds']:5.2f}x diffusers float32"
              f"  {arithmetic / r['seconds']:4.0f} GFLOP/s   peak RSS {r['peak_rss_mb']:6.0f} MB{warmup}")
    for dtype_name in ("float32", "bfloat16"):
        ours, theirs = (results.get((w, dtype_name, False, w == "ours")) for w in ("ours", "diffusers"))
        if ours and theirs:
            print(f"  ratio ours/diffusers in {dtype_name}: time {ours['seconds'] / theirs['seconds']:.3f}, "
                  f"peak RSS {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.3f}")
    return results


def best_dtypes(results: dict) -> dict:
    """Each side's faster precision (uncompiled, each side's default layout) in these step results."""
    best = {}
    for which in ("ours", "diffusers"):
        timed = {v[1]: r["seconds"] for v, r in results.items() if v[0] == which and not v[2] and v[3] == (which == "ours")}
        best[which] = min(timed, key=timed.get)
    return best


def report_txt2img(family: str, size: int, steps: int, dtypes: dict, compiled: bool, repeats: int,
                   tuned: bool = False) -> dict:
    """Ours (live previews on, the engine's process settings) against diffusers' pipeline (no
    previews) as it comes and, with ``tuned``, also channels-last in a process with huge pages
    (what ours does, done by hand), each at ``dtypes``; best of ``repeats`` fresh processes
    each, alternating so that a change of load hits all of them."""
    label = "SD 1.5" if family == "sd15" else "SDXL base"
    print(f"txt2img {size}x{size}, {label} size (random weights), {steps} Euler steps, CFG 7, VAE decode included; "
          f"best of {repeats} fresh processes; ours with a live preview every step; load {os.getloadavg()[0]:.1f}")
    results: dict[str, list] = {"ours": [], "diffusers": []} | ({"diffusers-tuned": []} if tuned else {})
    for _ in range(repeats):
        for which in results:
            dtype_name = dtypes["ours" if which == "ours" else "diffusers"]
            results[which].append(in_subprocess("--_txt2img", which, family, str(size), str(steps), dtype_name,
                                                str(int(compiled)), str(int(which == "ours")),
                                                huge_pages=which != "diffusers"))
    best = {which: min(runs, key=lambda r: r["seconds"]) for which, runs in results.items()}
    for which, r in best.items():
        others = ", ".join(f"{x['seconds']:.1f}" for x in results[which])
        print(f"  {which:16s} {dtypes['ours' if which == 'ours' else 'diffusers']:9s}{' compiled' if compiled else ''} "
              f"{r['seconds']:7.1f} s (runs: {others})  peak RSS {r['peak_rss_mb']:6.0f} MB  previews {r['previews']}")
    for which in best:
        if which != "ours":
            ratio = best[which]["seconds"] / best["ours"]["seconds"]
            print(f"  ours is {ratio:.2f}x as fast as {which} ({'faster' if ratio > 1 else 'slower'})")
    print(f"  load now {os.getloadavg()[0]:.1f}")
    return best


DEVICE_SIZES = {"sd15": 512, "sdxl": 1024}
FAMILY_LABELS = {"sd15": "SD 1.5", "sdxl": "SDXL base"}


def device_dtypes(device) -> list[str]:
    """The precisions to time on ``device``: fp16, and bf16 where the card computes it natively
    (Ampere and later); on the CPU both, as the same code path's check (slow at full size)."""
    import torch

    if device.type == "cuda":
        return ["float16"] + (["bfloat16"] if torch.cuda.is_bf16_supported() else [])
    return ["float16", "bfloat16"]


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def report_device_txt2img(device_arg: str, families: list[str], dtypes: list[str] | None, steps: int, compiled: bool,
                          folders: dict[str, str], size: int | None) -> dict:
    """Ours against diffusers' pipeline on ``device_arg``, each variant (family, precision,
    compiled or not, side) in a fresh process after an untimed warm-up job; a variant that
    fails (out of memory, a compiler error) is reported and the rest still run."""
    import torch

    device = torch.device(device_arg)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU")
    dtypes = dtypes or device_dtypes(device)
    sys.stdout.reconfigure(line_buffering=True)  # each variant's lines as it ends, even if a time limit stops the run
    memory = "peak GPU memory (max allocated)" if device.type == "cuda" else "peak RSS"
    print(f"device: {device_name(device)}; torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}")
    print(f"txt2img: prompt and negative prompt encoded, {steps} Euler steps, CFG 7, VAE decode, PIL picture; random "
          f"weights{' (tiny layouts)' if folders else ''}; each variant in a fresh process, timed after one untimed warm-up "
          f"job (which compiles, compiled); ours with a live preview every step; sampling it/s over steps 2 to {steps}")
    results = {}
    for family in families:
        side = size or DEVICE_SIZES[family]
        for dtype_name in dtypes:
            for compile_it in (False, True) if compiled else (False,):
                variant = (family, dtype_name, compile_it)
                print(f"{FAMILY_LABELS[family]} {side}x{side}, {dtype_name}{', compiled' if compile_it else ''}:")
                measured = {}
                for which in ("ours", "diffusers"):
                    spec = {"which": which, "family": family, "size": side, "steps": steps, "dtype_name": dtype_name,
                            "compiled": compile_it, "previews": which == "ours", "device_name": device_arg,
                            "folder": folders.get(family), "warm_up": True}
                    # The engine's process settings for ours (huge pages on a CPU), diffusers as it comes.
                    r = in_subprocess_or_report(f"{which:10s}", "--_device_txt2img", json.dumps(spec),
                                                huge_pages=which == "ours")
                    if r is None:
                        continue
                    measured[which] = r
                    rate = f"{r['steps_per_second']:.2f} it/s" if r["steps_per_second"] else "n/a (one step)"
                    print(f"  {which:10s} total {r['seconds']:8.3f} s   sampling {rate}   {memory} {r['peak_memory_mb']:.0f} MB"
                          f"   (warm-up job {r['warmup_seconds']:.1f} s)")
                if len(measured) == 2:
                    ours, theirs = measured["ours"], measured["diffusers"]
                    rates = (f", sampling it/s {ours['steps_per_second'] / theirs['steps_per_second']:.3f}"
                             if ours["steps_per_second"] and theirs["steps_per_second"] else "")
                    print(f"  ratio ours/diffusers: total time {ours['seconds'] / theirs['seconds']:.3f}{rates}, "
                          f"{memory} {ours['peak_memory_mb'] / theirs['peak_memory_mb']:.3f}")
                results[variant] = measured
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--roofline", action="store_true",
                        help="only: the counted arithmetic of a 512x512 UNet step and decode, this machine's float32 "
                             "matmul and convolution rates, and the least time those allow (seconds)")
    parser.add_argument("--roofline-latent", type=int, default=64, help=argparse.SUPPRESS)
    parser.add_argument("--_rates", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--_step", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true",
                        help="also time the UNet step compiled with torch.compile (inductor), ours and diffusers, and run "
                             "the whole txt2img compiled (a first untimed job compiles)")
    parser.add_argument("--skip-txt2img", action="store_true", help="no whole 512x512 txt2img comparison")
    parser.add_argument("--skip-bf16", action="store_true",
                        help="no bfloat16 UNet steps (on a CPU without native bf16 each takes many minutes)")
    parser.add_argument("--txt2img-steps", type=int, default=20)
    parser.add_argument("--skip-tuned-diffusers", action="store_true",
                        help="no third txt2img run of diffusers made channels-last in a process with huge pages")
    parser.add_argument("--txt2img-repeats", type=int, default=2, help="fresh processes per side for the txt2img (best of)")
    parser.add_argument("--txt2img-sdxl", action="store_true",
                        help="only: a whole SDXL 1024x1024 txt2img, ours vs diffusers' StableDiffusionXLPipeline, in "
                             "bfloat16 (--txt2img-steps, one process each; about an hour per side on 2 cores)")
    parser.add_argument("--_txt2img", nargs=7, help=argparse.SUPPRESS)
    parser.add_argument("--skip-vae4k", action="store_true")
    parser.add_argument("--_load", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_vae", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--skip-vae2k", action="store_true")
    parser.add_argument("--vae2k-only", action="store_true", help="only the 2048x2048 decode under a 12 GB limit")
    parser.add_argument("--_vae_limited", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--sdxl", action="store_true", help="also time a full-size SDXL UNet step at 1024x1024")
    parser.add_argument("--sdxl-only", action="store_true", help="only the SDXL step")
    parser.add_argument("--sdxl-dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--_sdxl", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--sdxl-txt2img", action="store_true",
                        help="only: one whole SDXL 1024x1024 txt2img (about 15 GB in float32, many CPU minutes)")
    parser.add_argument("--sdxl-txt2img-steps", type=int, default=2)
    parser.add_argument("--sdxl-txt2img-size", type=int, default=1024)
    parser.add_argument("--sdxl-txt2img-shapes", default=str(SDXL_REFERENCE),
                        help="checkpoint manifest (key -> shape) of the model (default: the SDXL base)")
    parser.add_argument("--_sdxl_txt2img", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--device", help="only: the whole txt2img, ours vs diffusers, on this device (cuda, cuda:N or "
                        "cpu): SD 1.5 at 512x512 and SDXL at 1024x1024 in fp16 (and bf16 where the card has it), "
                        "--txt2img-steps steps; with --compile also both compiled")
    parser.add_argument("--device-families", nargs="+", choices=tuple(DEVICE_SIZES), default=list(DEVICE_SIZES))
    parser.add_argument("--device-dtypes", nargs="+", choices=("float16", "bfloat16", "float32"),
                        help="precisions for --device (default: fp16, and bf16 where supported)")
    parser.add_argument("--device-size", type=int, help="picture size for every family of --device (default 512 / 1024)")
    parser.add_argument("--device-sd15-folder", help="a diffusers folder whose layout replaces the full-size SD 1.5 one "
                        "(random weights; tests run the --device path with a tiny one)")
    parser.add_argument("--device-sdxl-folder", help="the same for SDXL")
    parser.add_argument("--_device_txt2img", help=argparse.SUPPRESS)
    parser.add_argument("--flow", action="store_true",
                        help="only: the SD 3.5 medium and FLUX.1 transformer steps, ours vs diffusers, at full width with "
                             "the depth cut (bench/bench_flow.py), in bfloat16 and float32")
    parser.add_argument("--flow-latent", type=int, default=64, help="latent side of the --flow steps (64: 512x512)")
    parser.add_argument("--flow-dtypes", nargs="+", choices=("bfloat16", "float32"), default=["bfloat16", "float32"])
    parser.add_argument("--flow-repeats", type=int, default=3, help="float32 calls per --flow variant (best of)")
    parser.add_argument("--flow-bf16-repeats", type=int, default=2,
                        help="bfloat16 calls per --flow variant (best of; minutes each on a CPU without native bf16)")
    parser.add_argument("--flow-sd3-depth", type=int, default=2, help="joint blocks of the --flow SD 3.5 medium (of 24)")
    parser.add_argument("--flow-flux-depth", type=int, nargs=2, default=[1, 2], metavar=("DOUBLE", "SINGLE"),
                        help="double and single blocks of the --flow FLUX.1 (of 19 and 38)")
    parser.add_argument("--flow-tiny", action="store_true", help="--flow with narrow layouts (tests)")
    parser.add_argument("--_flow", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._sdxl_txt2img:
        shapes, size, steps, dtype_name = args._sdxl_txt2img
        print(json.dumps(measure_sdxl_txt2img(shapes, int(size), int(steps), dtype_name)))
        return
    if args._sdxl:
        print(json.dumps(measure_sdxl_step(args._sdxl[0], int(args._sdxl[1]), args._sdxl[2])))
        return
    if args._step:
        which, latent, repeats, dtype_name, compiled, channels_last = args._step
        print(json.dumps(measure_step(which, int(latent), int(repeats), dtype_name, compiled == "1", channels_last == "1")))
        return
    if args._txt2img:
        which, family, size, steps, dtype_name, compiled, previews = args._txt2img
        print(json.dumps(measure_txt2img(which, family, int(size), int(steps), dtype_name, compiled == "1", previews == "1")))
        return
    if args._device_txt2img:
        print(json.dumps(measure_txt2img(**json.loads(args._device_txt2img))))
        return
    if args._flow:
        from bench_flow import measure_flow_step

        print(json.dumps(measure_flow_step(*json.loads(args._flow))))
        return
    if args._rates:
        print(json.dumps(machine_rates()))
        return
    if args._load:
        print(json.dumps(measure_load(*args._load)))
        return
    if args._vae:
        print(json.dumps(measure_vae_4k(args._vae)))
        return
    if args._vae_limited:
        print(json.dumps(measure_vae_limited(*args._vae_limited)))
        return

    if args.device:
        folders = {family: folder for family, folder in (("sd15", args.device_sd15_folder), ("sdxl", args.device_sdxl_folder))
                   if folder}
        report_device_txt2img(args.device, args.device_families, args.device_dtypes, args.txt2img_steps, args.compile,
                              folders, args.device_size)
        return

    if args.flow:
        from bench_flow import report_flow_steps

        report_flow_steps(args.flow_latent, {"float32": args.flow_repeats, "bfloat16": args.flow_bf16_repeats},
                          args.flow_dtypes, args.flow_sd3_depth, tuple(args.flow_flux_depth), args.flow_tiny)
        return

    import torch

    cpu = cpu_description()
    native = f"native bf16 ({', '.join(cpu['bf16_flags'])})" if cpu["bf16_flags"] else "no native bf16 (no AMX or AVX512-BF16)"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu['name']}, {native}; "
          f"oneDNN bf16 kernels: {cpu['onednn_bf16']}; load {os.getloadavg()[0]:.1f}")
    if args.roofline:
        report_roofline(args.roofline_latent)
        return
    if args.txt2img_sdxl:
        report_txt2img("sdxl", 1024, args.txt2img_steps, {"ours": "bfloat16", "diffusers": "bfloat16"}, args.compile, 1)
        return
    if args.vae2k_only:
        report_vae_limited()
        return
    if args.sdxl_txt2img:
        report_sdxl_txt2img(args.sdxl_txt2img_shapes, args.sdxl_txt2img_size, args.sdxl_txt2img_steps, args.sdxl_dtype)
        return
    if args.sdxl or args.sdxl_only:
        latent = 64 if args.quick else 128
        print(f"UNet step: SDXL base size, batch 2 (CFG), latent {latent}x{latent} ({latent * 8}x{latent * 8} image), "
              f"{args.sdxl_dtype}, one timed call each")
        results = {which: in_subprocess("--_sdxl", which, str(latent), args.sdxl_dtype, huge_pages=which == "ours")
                   for which in ("ours", "diffusers")}
        for which, r in results.items():
            print(f"  {which:10s} {r['seconds']:7.1f} s/step   peak RSS {r['peak_rss_mb']:8.0f} MB   "
                  f"(built in {r['build_seconds']:.0f} s, finite output: {r['finite']})")
        print(f"  ratio ours/diffusers: time {results['ours']['seconds'] / results['diffusers']['seconds']:.3f}, "
              f"peak RSS {results['ours']['peak_rss_mb'] / results['diffusers']['peak_rss_mb']:.3f}")
        if args.sdxl_only:
            return

    # Without native bf16 a bf16 step is emulated: minutes each, far beyond a quick run.
    skip_bf16 = args.skip_bf16 or (args.quick and not cpu["bf16_flags"])
    if skip_bf16:
        print("bfloat16 UNet steps skipped" + ("" if args.skip_bf16 else " (--quick on a CPU without native bf16)"))
    steps = report_unet_steps(32 if args.quick else 64, 1 if args.quick else 3, args.compile,
                              ("bfloat16",) if skip_bf16 else ())
    if not args.skip_txt2img:
        size, count = (256, 4) if args.quick else (512, args.txt2img_steps)
        report_txt2img("sd15", size, count, best_dtypes(steps), args.compile, 1 if args.quick else args.txt2img_repeats,
                       tuned=not args.skip_tuned_diffusers)
    if args.quick:
        return

    if not args.skip_vae4k:
        size = 1024 if args.quick else 4096
        r = in_subprocess("--_vae", str(size))
        print(f"VAE decode {size}x{size} (SD 1.5-size VAE, auto-tiled): {r['seconds']:.0f} s, peak RSS {r['peak_rss_mb']:.0f} MB "
              f"({r['peak_rss_mb'] / 1024:.1f} GiB of 24), output {r['shape']}")
    if not args.skip_vae2k:
        report_vae_limited(1024 if args.quick else 2048)
    if args.skip_load:
        return
    with tempfile.TemporaryDirectory() as tmp:
        for dtype_name in ("float16", "float32"):
            path = Path(tmp) / f"sd15-{dtype_name}.safetensors"
            write_checkpoint(path, dtype_name)
            size_mb = path.stat().st_size / 2**20
            r = in_subprocess("--_load", str(path), dtype_name)
            grew = r["peak_rss_mb"] - r["rss_before_mb"]
            print(f"Load {path.name} ({size_mb:.0f} MB, {r['params'] / 1e9:.3f}B parameters) as {dtype_name}: "
                  f"{r['seconds']:.1f} s, peak RSS growth {grew:.0f} MB = {grew / size_mb:.2f}x the file size")
            path.unlink()


if __name__ == "__main__":
    main()
