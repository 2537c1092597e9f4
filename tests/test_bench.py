"""bench/bench_engine.py's opt-in whole-SDXL txt2img measurement, run on a tiny SDXL manifest
(the real one needs about 15 GB and many CPU minutes: run by hand, see docs/PERFORMANCE.md)."""
import json
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
