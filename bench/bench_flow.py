"""The SD 3.x / FLUX.1 transformer step, ours against diffusers: `python bench/bench_engine.py --flow`.

SD 3.5 medium (core/models/mmdit.py MMDiT against diffusers' SD3Transformer2DModel) with a CFG
batch of 2, and FLUX.1 dev (core/models/flux.py FluxTransformer against FluxTransformer2DModel)
with a batch of 1 and its distilled guidance input, in bfloat16 and float32. Both sides get the
same random weights (ours built, then converted by diffusers' own single-file converter, as
tests/test_mmdit.py and tests/test_flux.py do) and the same inputs. Each (model, precision, side)
runs in a fresh process: best of N calls, s/step, the ratio ours/diffusers, and the peak RSS
while stepping (the high-water mark is reset once the model is built, so that the conversion's
second copy of the weights, which only the diffusers side needs, does not count).

Both networks are measured at their full width (SD 3.5 medium 1536 wide with 24 heads, FLUX.1
3072 with 24) and with their depth cut to what this machine can run in minutes: a CPU without
native bf16 multiplies bf16 matrices at a few GFLOP/s (docs/PERFORMANCE.md), and FLUX.1's 12B
weights would not fit 24 GiB anyway. The cut keeps each model's mix of block kinds (SD 3.5
medium: attn2 in the first 13 of 24 joint blocks; FLUX.1: twice as many single as double
blocks), so a per-block figure times the full depth estimates the whole step; the printout gives
both.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from bench_engine import ROOT, cpu_description, in_subprocess_or_report

# The text tokens each pipeline feeds the transformer: SD3's 77 CLIP tokens + 256 T5 tokens
# (StableDiffusion3Pipeline's max_sequence_length), FLUX's T5 tokens (256: schnell's length and
# FluxPipeline's lower setting; dev's default 512 would double the text half of every call).
TEXT_TOKENS = {"sd3": 77 + 256, "flux": 256}
BATCH = {"sd3": 2, "flux": 1}  # SD3 samples with CFG (cond + uncond); FLUX dev's guidance is distilled in
FAMILY_LABELS = {"sd3": "SD 3.5 medium", "flux": "FLUX.1 dev"}
FULL_DEPTH = {"sd3": 24, "flux": (19, 38)}
SD35_MEDIUM_DUAL_SHARE = 13 / 24  # joint blocks with attn2 (0..12 of 24)


def sd3_config(depth: int, tiny: bool):
    """SD 3.5 medium's published config (tests/test_mmdit.py FULL_SIZE) cut to ``depth`` joint
    blocks, attn2 in the same share of them; ``tiny``: 128 wide (the MLP 4x that, as diffusers
    builds it), for tests."""
    from core.models.mmdit import MMDiTConfig

    dual = tuple(range(max(1, round(depth * SD35_MEDIUM_DUAL_SHARE))))
    if tiny:
        return MMDiTConfig(depth=depth, hidden_size=128, num_heads=2, pos_embed_max_size=8, mlp_hidden=512, qk_norm=True,
                           dual_attention_blocks=dual)
    return MMDiTConfig(depth=depth, hidden_size=1536, num_heads=24, pos_embed_max_size=384, mlp_hidden=6144, qk_norm=True,
                       dual_attention_blocks=dual)


def flux_config(depth: int, depth_single: int, tiny: bool):
    """FLUX.1 dev (FluxConfig's defaults) cut to ``depth`` double and ``depth_single`` single
    blocks; ``tiny``: 256 wide (2 heads of FLUX's 128, so the rotary axes stay 16/56/56)."""
    from core.models.flux import FluxConfig

    width = dict(hidden_size=256, num_heads=2) if tiny else {}
    return FluxConfig(depth=depth, depth_single=depth_single, **width)


def config_from_fields(family: str, fields: dict):
    """The config a parent process sent as JSON (tuples arrive as lists)."""
    from core.models.flux import FluxConfig
    from core.models.mmdit import MMDiTConfig

    kind = MMDiTConfig if family == "sd3" else FluxConfig
    return kind(**{key: tuple(value) if isinstance(value, list) else value for key, value in fields.items()})


def build_ours(family: str, config):
    import torch

    from core.models.flux import FluxTransformer
    from core.models.mmdit import MMDiT

    torch.manual_seed(0)
    return (MMDiT(config) if family == "sd3" else FluxTransformer(config)).eval()


def flux_converter(hidden_size: int):
    """diffusers' FLUX single-file converter; it hard-codes FLUX.1's width (3072), so a narrower
    (test) layout takes the width-patched copy the parity tests use (tests/diffusers_oracle.py)."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    if hidden_size == 3072:
        return convert_flux_transformer_checkpoint_to_diffusers
    sys.path.insert(0, str(ROOT / "tests"))
    from diffusers_oracle import diffusers_converter

    return diffusers_converter(hidden_size)


def build_diffusers(family: str, config):
    """diffusers' model holding our random weights, converted by diffusers' own single-file
    converter (which must consume every key); built on the meta device and given the converted
    tensors, so that no third copy of the weights is made."""
    import torch
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    checkpoint = {f"model.diffusion_model.{key}": value for key, value in build_ours(family, config).state_dict().items()}
    if family == "sd3":
        converted = convert_sd3_transformer_checkpoint_to_diffusers(checkpoint)
        arguments = dict(
            patch_size=config.patch_size, in_channels=config.in_channels, num_layers=config.depth,
            attention_head_dim=config.head_dim, num_attention_heads=config.num_heads, joint_attention_dim=config.context_dim,
            caption_projection_dim=config.hidden_size, pooled_projection_dim=config.pooled_dim,
            out_channels=config.out_channels, pos_embed_max_size=config.pos_embed_max_size,
            dual_attention_layers=config.dual_attention_blocks, qk_norm="rms_norm")
        kind = SD3Transformer2DModel
    else:
        converted = flux_converter(config.hidden_size)(checkpoint)
        arguments = dict(
            patch_size=1, in_channels=config.in_channels, num_layers=config.depth, num_single_layers=config.depth_single,
            attention_head_dim=config.head_dim, num_attention_heads=config.num_heads, joint_attention_dim=config.context_dim,
            pooled_projection_dim=config.pooled_dim, guidance_embeds=config.guidance_embed, axes_dims_rope=config.axes_dim)
        kind = FluxTransformer2DModel
    if checkpoint:
        raise SystemExit(f"diffusers' converter left keys unread: {sorted(checkpoint)[:5]}")
    with torch.device("meta"):
        model = kind(**arguments)
    model.load_state_dict(converted, strict=True, assign=True)
    if any(tensor.is_meta for tensor in (*model.parameters(), *model.buffers())):
        raise SystemExit("diffusers' model kept tensors its state dict does not hold")
    return model.eval()


def step_inputs(family: str, config, latent: int, dtype) -> dict:
    """The same inputs for both sides, from a fixed seed: latent, time, text tokens, pooled text
    vector (and FLUX dev's guidance value), in the precision of the run."""
    import torch

    generator = torch.Generator().manual_seed(1)
    batch = BATCH[family]
    inputs = {"latent": torch.randn(batch, 16, latent, latent, generator=generator, dtype=dtype),
              "context": torch.randn(batch, TEXT_TOKENS[family], config.context_dim, generator=generator, dtype=dtype),
              "pooled": torch.randn(batch, config.pooled_dim, generator=generator, dtype=dtype)}
    if family == "sd3":
        inputs["timesteps"] = torch.full((batch,), 500.0)  # SD3 times are in [0, 1000)
    else:
        inputs["timesteps"] = torch.full((batch,), 0.5)  # FLUX takes sigma in [0, 1]
        inputs["guidance"] = torch.full((batch,), 3.5)
    return inputs


def step_call(family: str, which: str, model, inputs: dict):
    """One transformer call as each side's pipeline makes it per step. diffusers' FluxPipeline
    packs the latent into 2x2 patch tokens and makes the position ids once per job, so those are
    prepared here, outside the timed call; ours packs inside its forward (a reshape)."""
    if which == "ours":
        if family == "sd3":
            return lambda: model(inputs["latent"], inputs["timesteps"], inputs["context"], inputs["pooled"])
        return lambda: model(inputs["latent"], inputs["timesteps"], inputs["context"], inputs["pooled"], inputs["guidance"])
    if family == "sd3":
        return lambda: model(hidden_states=inputs["latent"], encoder_hidden_states=inputs["context"],
                             pooled_projections=inputs["pooled"], timestep=inputs["timesteps"], return_dict=False)[0]
    import torch
    from diffusers import FluxPipeline

    latent = inputs["latent"]
    batch, channels, height, width = latent.shape
    packed = FluxPipeline._pack_latents(latent, batch, channels, height, width)
    image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, latent.device, latent.dtype)
    text_ids = torch.zeros(inputs["context"].shape[1], 3, dtype=latent.dtype)
    return lambda: model(hidden_states=packed, timestep=inputs["timesteps"], guidance=inputs["guidance"],
                         pooled_projections=inputs["pooled"], encoder_hidden_states=inputs["context"], txt_ids=text_ids,
                         img_ids=image_ids, return_dict=False)[0]


def reset_peak_rss() -> None:
    """Set the process's RSS high-water mark (VmHWM) to its current RSS (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_since_reset_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def first_values(output, family: str, which: str, latent: int) -> list[float]:
    """The first 16 values of the answer in our (B, C, H, W) layout, so that a parent process can
    see both sides computed the same function (diffusers' FLUX answers in packed tokens)."""
    if family == "flux" and which == "diffusers":
        from diffusers import FluxPipeline

        output = FluxPipeline._unpack_latents(output, latent * 8, latent * 8, 8)
    return output.float().flatten()[:16].tolist()


def measure_flow_step(family: str, which: str, dtype_name: str, latent: int, repeats: int, config_fields: dict) -> dict:
    """Best of ``repeats`` calls of one transformer step, the first call included (a bf16 call
    takes minutes here, so no untimed warm-up: eager CPU kernels need none beyond the allocator)."""
    import gc

    import torch

    torch.set_grad_enabled(False)
    dtype = getattr(torch, dtype_name)
    config = config_from_fields(family, config_fields)
    start = time.perf_counter()
    model = (build_ours(family, config) if which == "ours" else build_diffusers(family, config)).to(dtype)
    inputs = step_inputs(family, config, latent, dtype)
    call = step_call(family, which, model, inputs)
    built = time.perf_counter() - start
    gc.collect()
    reset_peak_rss()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        output = call()
        times.append(time.perf_counter() - start)
    return {"seconds": min(times), "times": times, "build_seconds": built, "peak_rss_mb": peak_rss_since_reset_mb(),
            "parameters": sum(p.numel() for p in model.parameters()), "finite": bool(torch.isfinite(output).all()),
            "first_values": first_values(output, family, which, latent)}


def flow_variants(sd3_depth: int, flux_depths: tuple[int, int], tiny: bool) -> dict:
    """{family: (config, how many times the cut model's blocks the full model's are)}."""
    depth, depth_single = flux_depths
    scale_flux = (FULL_DEPTH["flux"][0] + FULL_DEPTH["flux"][1]) / (depth + depth_single)
    return {"sd3": (sd3_config(sd3_depth, tiny), FULL_DEPTH["sd3"] / sd3_depth),
            "flux": (flux_config(depth, depth_single, tiny), scale_flux)}


def describe(family: str, config, latent: int, scale: float) -> str:
    if family == "sd3":
        blocks = f"{config.depth} of 24 joint blocks ({len(config.dual_attention_blocks)} with attn2)"
    else:
        blocks = f"{config.depth} of 19 double + {config.depth_single} of 38 single blocks"
    return (f"{FAMILY_LABELS[family]}: width {config.hidden_size}, {config.num_heads} heads, {blocks}; batch {BATCH[family]}"
            f"{' (CFG)' if family == 'sd3' else ' with guidance 3.5'}, latent {latent}x{latent} ({latent * 8}x{latent * 8}), "
            f"{TEXT_TOKENS[family]} text tokens; full depth = x{scale:.2f}")


def report_flow_steps(latent: int, repeats: dict, dtypes: list[str], sd3_depth: int, flux_depths: tuple[int, int],
                      tiny: bool = False) -> dict:
    """Each (family, precision, side) in a fresh process (ours with the engine's huge pages, as
    the UNet steps run); prints s/step, the estimate at full depth, ratios and peak RSS."""
    import torch

    cpu = cpu_description()
    print(f"Transformer steps (SD 3.x / FLUX.1), ours vs diffusers; torch {torch.__version__}, {cpu['threads']} threads, "
          f"CPU: {cpu['name']}; random weights{' (tiny layouts)' if tiny else ''}, each in a fresh process; "
          f"load {os.getloadavg()[0]:.1f}")
    results = {}
    for family, (config, scale) in flow_variants(sd3_depth, flux_depths, tiny).items():
        print(describe(family, config, latent, scale))
        for dtype_name in dtypes:
            measured = {}
            for which in ("ours", "diffusers"):
                spec = (family, which, dtype_name, latent, repeats[dtype_name], dataclasses.asdict(config))
                r = in_subprocess_or_report(f"{which:9s} {dtype_name:8s}", "--_flow", json.dumps(spec),
                                            huge_pages=which == "ours")
                if r is None:
                    continue
                measured[which] = r
                runs = ", ".join(f"{t:.2f}" for t in r["times"])
                print(f"  {which:9s} {dtype_name:8s} {r['seconds']:8.3f} s/step (best of {len(r['times'])}: {runs}), "
                      f"full depth ~{r['seconds'] * scale:.1f} s   peak RSS {r['peak_rss_mb']:.0f} MB   "
                      f"finite: {r['finite']}")
            if len(measured) == 2:
                ours, theirs = measured["ours"], measured["diffusers"]
                difference = max(abs(a - b) for a, b in zip(ours["first_values"], theirs["first_values"]))
                print(f"  ratio ours/diffusers in {dtype_name}: time {ours['seconds'] / theirs['seconds']:.3f}, "
                      f"peak RSS {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.3f}; first 16 outputs differ by at most "
                      f"{difference:.2g}")
            results[(family, dtype_name)] = measured
    print(f"  load now {os.getloadavg()[0]:.1f}")
    return results
