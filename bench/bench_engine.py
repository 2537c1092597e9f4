"""Speed and memory of the engine against diffusers, measured in the same run on this machine.

    python bench/bench_engine.py            # everything below
    python bench/bench_engine.py --quick    # smaller latent, one repeat (a smoke run)

1. One CFG step of the full-size SD 1.5 UNet (random weights, batch 2 = cond + uncond,
   512x512 image = 64x64 latent): seconds per step and peak RSS, ours vs diffusers.
2. Loading a full-size SD 1.5 single-file checkpoint (random weights, written once to a temp
   folder) and reading every weight once: peak RSS growth, as a ratio of the file size.

3. A 4096x4096 decode through the SD 1.5-size VAE (random weights), tiled automatically:
   seconds and peak RSS (must fit in this machine's 24 GiB). Skipped with --skip-vae4k.
   Then a 2048x2048 decode through the same VAE in a process whose address space is limited
   to 12 GB (RLIMIT_AS; its whole-picture attention alone would be 16 GiB): seconds, peak RSS
   and the tiles/attention blocks chosen from that limit. Skipped with --skip-vae2k;
   --vae2k-only runs only this one.
4. With --sdxl: one CFG step (batch 2) of the full-size SDXL base UNet (2.57B parameters, random
   weights, shapes from sdxl_base.json) at 1024x1024 (128x128 latent), ours vs diffusers, with
   the added size/pooled vector: seconds and peak RSS. --sdxl-dtype bfloat16 halves the memory
   (about 10.3 GB of float32 weights per process otherwise). --sdxl-only skips 1-3.
5. With --sdxl-txt2img (and nothing else): one whole SDXL txt2img at 1024x1024 through our
   pipeline: the full-size base model (UNet, VAE, CLIP-L and OpenCLIP bigG text encoders; random
   weights in the real shapes of sdxl_base.json, built by the loader's build_model), prompt and
   negative prompt encoded, 2 Euler steps with CFG (--sdxl-txt2img-steps), VAE decode (tiled
   if it would not fit). Prints seconds (building, text + sampling, decode), peak RSS and
   whether it fits in 24 GiB. Needs about 15 GB of memory in float32 (--sdxl-dtype bfloat16:
   about half) and many CPU minutes. --sdxl-txt2img-shapes FILE and --sdxl-txt2img-size N run
   the same code on another manifest (a tiny one, as tests/test_bench.py does).

Each measurement runs in a fresh subprocess so that peak RSS belongs to that measurement alone.
Prints ratios (ours / diffusers, load RSS / file size); targets: both speed and memory ratios
<= 1.0, load ratio < 1.5.
"""
from __future__ import annotations

import argparse
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


def measure_step(which: str, latent: int, repeats: int) -> dict:
    import torch

    torch.set_grad_enabled(False)
    unet, context_dim = build_ours() if which == "ours" else build_diffusers()
    x = torch.randn(2, 4, latent, latent)
    t = torch.tensor([500.0, 500.0])
    context = torch.randn(2, 77, context_dim)
    call = (lambda: unet(x, t, context)) if which == "ours" else (lambda: unet(x, t, encoder_hidden_states=context).sample)
    call()  # warm-up: allocator, kernels
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "peak_rss_mb": peak_rss_mb()}


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


def random_weights(shapes: dict, dtype) -> dict:
    """Random tensors for a checkpoint layout: normalisation scales (the only 1-D ``.weight``
    tensors: group and layer norms) 1, everything else N(0, 0.02), so activations stay in range
    through dozens of layers; drawn in float32 and converted one by one."""
    import torch

    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for key, shape in shapes.items():
        if key.endswith(".weight") and len(shape) == 1:
            value = torch.ones(shape)
        else:
            value = torch.randn(shape, generator=generator) * 0.02
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


def in_subprocess(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--_step", nargs=3, help=argparse.SUPPRESS)
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
    args = parser.parse_args()
    if args._sdxl_txt2img:
        shapes, size, steps, dtype_name = args._sdxl_txt2img
        print(json.dumps(measure_sdxl_txt2img(shapes, int(size), int(steps), dtype_name)))
        return
    if args._sdxl:
        print(json.dumps(measure_sdxl_step(args._sdxl[0], int(args._sdxl[1]), args._sdxl[2])))
        return
    if args._step:
        print(json.dumps(measure_step(args._step[0], int(args._step[1]), int(args._step[2]))))
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

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
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
        results = {which: in_subprocess("--_sdxl", which, str(latent), args.sdxl_dtype) for which in ("ours", "diffusers")}
        for which, r in results.items():
            print(f"  {which:10s} {r['seconds']:7.1f} s/step   peak RSS {r['peak_rss_mb']:8.0f} MB   "
                  f"(built in {r['build_seconds']:.0f} s, finite output: {r['finite']})")
        print(f"  ratio ours/diffusers: time {results['ours']['seconds'] / results['diffusers']['seconds']:.3f}, "
              f"peak RSS {results['ours']['peak_rss_mb'] / results['diffusers']['peak_rss_mb']:.3f}")
        if args.sdxl_only:
            return

    latent, repeats = (32, 1) if args.quick else (64, 3)
    print(f"UNet step: SD 1.5 size, batch 2 (CFG), latent {latent}x{latent} ({latent * 8}x{latent * 8} image), best of {repeats}")
    results = {which: in_subprocess("--_step", which, str(latent), str(repeats)) for which in ("ours", "diffusers")}
    for which, r in results.items():
        print(f"  {which:10s} {r['seconds']:7.2f} s/step   peak RSS {r['peak_rss_mb']:8.0f} MB")
    print(f"  ratio ours/diffusers: time {results['ours']['seconds'] / results['diffusers']['seconds']:.3f}, "
          f"peak RSS {results['ours']['peak_rss_mb'] / results['diffusers']['peak_rss_mb']:.3f}")

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
