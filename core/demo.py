"""The bundled demo model: a tiny SD 1.x-layout checkpoint this project trains itself
(models/demo/README.md), so that a machine with no downloaded checkpoint still makes pictures.

It is always listed (even when --ckpt-dir points elsewhere), labelled as the demo, sorted after
the user's own checkpoints, and chosen by default only when there is nothing else.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO_NAME = "demo-shapes.safetensors"
DEMO_CHECKPOINT = ROOT / "models" / "Stable-diffusion" / DEMO_NAME
DEMO_LORA = ROOT / "models" / "Lora" / "demo-outlined.safetensors"
DEMO_LABEL = "demo model: 64x64 coloured shapes"
DEMO_SIZE = 64  # the demo's native picture size


def is_demo(name: str | None) -> bool:
    return bool(name) and Path(name).name == DEMO_NAME


def with_demo(names: list[str], demo_file: Path = DEMO_CHECKPOINT) -> list[str]:
    """The user's checkpoint names first, then the demo (if its file is there)."""
    own = [n for n in names if not is_demo(n)]
    demo = [n for n in names if is_demo(n)] or ([DEMO_NAME] if demo_file.is_file() else [])
    return own + demo[:1]


def label(name: str) -> str:
    """How a checkpoint name shows in a list: the demo says what it is."""
    return f"{name} ({DEMO_LABEL})" if is_demo(name) else name
