"""bench/bench_engine.py's opt-in measurements that run whole jobs, on tiny layouts: the whole-SDXL
txt2img on the CPU (the real one needs about 15 GB and many CPU minutes) and the ours-against-diffusers
comparison of `--device cuda` (run on the CPU here; on a GPU by hand): see docs/PERFORMANCE.md."""
import json
import re
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open

import tiny_models

ROOT = Path(__file__).resolve().parents[1]


def test_sdxl_txt2img_measurement_runs_on_a_tiny_manifest(tmp_path):
    checkpoint = tiny_models.save_sdxl(tmp_path / "sdxl")["safetensors"]
    with safe_open(str(checkpoint), "pt") as f:
        shapes = {key: list(f.get_slice(key).get_shape()) for key in f.keys()}
    manifest = tmp_path / "tiny_sdxl.json"
    manifest.write_text(json.dumps({"tensors": shapes}))
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_engine.py"), "--sdxl-txt2img", "--sdxl-txt2img-shapes", str(manifest),
         "--sdxl-txt2img-size", "64", "--sdxl-txt2img-steps", "1"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[1].startswith("txt2img 64x64: sdxl (") and "float32, 1 Euler step with CFG" in lines[1]
    assert "finite latents: True" in lines[2]
    assert lines[3].startswith("  peak RSS ") and lines[3].endswith("fits in 24 GiB")
    assert len(lines) == 4  # nothing else is measured with --sdxl-txt2img


def test_device_txt2img_comparison_runs_on_the_cpu_with_tiny_layouts(tmp_path):
    """The path `bench_engine.py --device cuda` takes, on the CPU, with the tiny SD 1.5 and SDXL
    layouts in place of the full-size ones: every variant measured, ratios printed."""
    sd15 = tiny_models.save_diffusers_folder(tmp_path / "sd15")
    sdxl = tiny_models.save_sdxl(tmp_path)["diffusers"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_engine.py"), "--device", "cpu", "--device-sd15-folder", str(sd15),
         "--device-sdxl-folder", str(sdxl), "--device-size", "64", "--txt2img-steps", "3", "--device-dtypes", "float16"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("device: cpu; torch ") and lines[0].endswith("CUDA none")
    assert "3 Euler steps, CFG 7" in lines[1] and "(tiny layouts)" in lines[1]
    assert lines[2] == "SD 1.5 64x64, float16:" and lines[6] == "SDXL base 64x64, float16:"
    assert len(lines) == 10
    for first in (3, 7):
        for line, which in zip(lines[first:first + 2], ("ours", "diffusers")):
            numbers = re.fullmatch(rf"  {which} +total +([\d.]+) s   sampling ([\d.]+) it/s   peak RSS (\d+) MB"
                                   r"   \(warm-up job ([\d.]+) s\)", line)
            assert numbers, line
            assert all(float(n) > 0 for n in numbers.groups()), line
        ratio = re.fullmatch(r"  ratio ours/diffusers: total time ([\d.]+), sampling it/s ([\d.]+), peak RSS ([\d.]+)",
                             lines[first + 2])
        assert ratio and all(float(n) > 0 for n in ratio.groups()), lines[first + 2]


def load_bench():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_engine", ROOT / "bench" / "bench_engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_precisions_are_fp16_and_bf16_only_where_the_card_has_it(monkeypatch):
    import torch

    bench = load_bench()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert bench.device_dtypes(torch.device("cuda")) == ["float16", "bfloat16"]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert bench.device_dtypes(torch.device("cuda")) == ["float16"]
    assert bench.device_dtypes(torch.device("cpu")) == ["float16", "bfloat16"]


def test_sampling_rate_leaves_the_first_step_out():
    import torch

    clock = load_bench().StepClock(torch.device("cpu"))
    clock.marks = [10.0, 12.5, 13.0, 13.5]  # steps 2 to 4 ended 2.5, 3 and 3.5 s after the first
    assert clock.steps_per_second() == 3 / 3.5
    clock.marks = [10.0]
    assert clock.steps_per_second() is None


def test_roofline_counts_the_arithmetic_and_prints_the_least_time(tmp_path):
    """`bench_engine.py --roofline`: the counted arithmetic is exact for a known layer, scales with
    the picture as a convolutional network must, and the printed bound follows from the counts."""
    sys.path.insert(0, str(ROOT / "bench"))
    import torch

    import bench_engine

    linear = bench_engine.counted_gflop(lambda: torch.nn.Linear(64, 32), (10, 64))
    assert linear["total"] * 1e9 == 2 * 10 * 64 * 32
    small, large = bench_engine.sd15_step_gflop(8), bench_engine.sd15_step_gflop(16)
    assert large["convolution"] == 4 * small["convolution"]  # convolutions grow with the pixel count
    assert large["bmm"] > 4 * small["bmm"]  # self-attention grows with its square
    assert abs(sum(n for op, n in small.items() if op != "total") - small["total"]) < 1e-6

    done = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_engine.py"), "--roofline", "--roofline-latent", "8"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 4
    rates = re.fullmatch(r"Roofline, float32, \d+ threads: matrix multiply 4096x2048x2048 (\d+) GFLOP/s; "
                         r"3x3 convolution 320->320 at 64x64 \(batch 2, weights arranged\) (\d+) GFLOP/s", lines[1])
    assert rates and all(int(n) > 0 for n in rates.groups()), lines[1]
    step = re.fullmatch(r"  UNet step \(SD 1\.5 size, batch 2, latent 8x8\): ([\d.]+) GFLOP \((.*)\): at least ([\d.]+) s "
                        r"\(convolutions at the convolution rate, the rest at the matmul rate\)", lines[2])
    assert step, lines[2]
    assert abs(float(step[1]) - small["total"]) < 0.1 and "convolutions " in step[2] and "attention " in step[2]
    matmul, convolution = (float(n) for n in rates.groups())
    # The bound from the printed (rounded) rates brackets the printed one, itself rounded to 0.01 s.
    low, high = small["total"] / max(matmul + 1, convolution + 1), small["total"] / min(matmul - 1, convolution - 1)
    assert low - 0.005 <= float(step[3]) <= high + 0.005
    assert lines[3].startswith("  VAE decode (64x64): ")


def test_flow_transformer_steps_run_on_tiny_layouts(tmp_path):
    """`bench_engine.py --flow` on narrow SD 3.5 medium / FLUX.1 layouts: every (model, precision,
    side) measured in its own process, both sides given the same weights and inputs (their first
    outputs agree: to float32 rounding in float32, to bf16's in bfloat16), ratios printed."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_engine.py"), "--flow", "--flow-tiny", "--flow-latent", "8",
         "--flow-repeats", "2", "--flow-bf16-repeats", "1", "--flow-sd3-depth", "2", "--flow-flux-depth", "1", "2"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("Transformer steps (SD 3.x / FLUX.1), ours vs diffusers; torch ") and "(tiny layouts)" in lines[0]
    assert len(lines) == 16 and lines[15].startswith("  load now ")
    assert lines[1] == ("SD 3.5 medium: width 128, 2 heads, 2 of 24 joint blocks (1 with attn2); batch 2 (CFG), "
                        "latent 8x8 (64x64), 333 text tokens; full depth = x12.00")
    assert lines[8] == ("FLUX.1 dev: width 256, 2 heads, 1 of 19 double + 2 of 38 single blocks; batch 1 with guidance 3.5, "
                        "latent 8x8 (64x64), 256 text tokens; full depth = x19.00")
    for first, scale in ((2, 12.0), (9, 19.0)):
        for offset, (dtype_name, calls, tolerance) in enumerate((("bfloat16", 1, 0.2), ("float32", 2, 1e-4))):
            block = lines[first + 3 * offset:first + 3 * offset + 3]
            for line, which in zip(block, ("ours", "diffusers")):
                numbers = re.fullmatch(rf"  {which} +{dtype_name} +([\d.]+) s/step \(best of {calls}: ([\d., ]+)\), "
                                       r"full depth ~([\d.]+) s   peak RSS (\d+) MB   finite: True", line)
                assert numbers, line
                seconds, runs = float(numbers[1]), [float(n) for n in numbers[2].split(", ")]
                assert seconds > 0 and len(runs) == calls and abs(min(runs) - seconds) < 0.01, line
                assert abs(float(numbers[3]) - seconds * scale) <= 0.05 + 0.001 * seconds * scale, line
                assert int(numbers[4]) > 0
            ratio = re.fullmatch(rf"  ratio ours/diffusers in {dtype_name}: time ([\d.]+), peak RSS ([\d.]+); "
                                 r"first 16 outputs differ by at most ([\d.e+-]+)", block[2])
            assert ratio and float(ratio[1]) > 0 and float(ratio[2]) > 0, block[2]
            assert float(ratio[3]) <= tolerance, block[2]
