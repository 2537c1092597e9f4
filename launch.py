"""Start the Stable Diffusion studio web UI.

    python launch.py [--listen] [--port 7860] [--device auto] ...

On first start this creates ``venv/`` and installs requirements.txt into it
(see bootstrap.py), then restarts itself inside that environment.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import bootstrap  # noqa: E402  (standard library only)

DEFAULT_CKPT_DIR = ROOT / "models" / "Stable-diffusion"
DEFAULT_OUTDIR = ROOT / "outputs"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="Offline Stable Diffusion studio: sets up its environment, then serves the web UI.",
    )
    parser.add_argument(
        "--skip-install",
        action="store_true",
        help="do not check or install requirements; use the current interpreter as it is",
    )
    parser.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda", "mps"],
        default="auto",
        help="device to run the model on (default: auto = cuda, then mps, then cpu)",
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "bf16"],
        default="auto",
        help="weight/compute precision (default: auto, chosen for the device)",
    )
    parser.add_argument(
        "--ckpt-dir",
        type=Path,
        default=DEFAULT_CKPT_DIR,
        help="folder with checkpoint files (default: models/Stable-diffusion)",
    )
    parser.add_argument(
        "--outdir",
        type=Path,
        default=DEFAULT_OUTDIR,
        help="folder where generated images are saved (default: outputs/)",
    )
    parser.add_argument(
        "--listen",
        action="store_true",
        help="serve on 0.0.0.0 (reachable from the network) instead of 127.0.0.1",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=7860,
        help="port of the web UI (default: 7860)",
    )
    parser.add_argument(
        "--nowebui",
        action="store_true",
        help="only set up the environment and folders, then exit without serving",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 < args.port < 65536:
        print(f"launch.py: error: --port {args.port} is not a valid port", file=sys.stderr)
        return 2

    bootstrap.ensure_environment(["requirements.txt"], skip_install=args.skip_install)

    args.ckpt_dir = args.ckpt_dir.expanduser().resolve()
    args.outdir = args.outdir.expanduser().resolve()
    for folder in (args.ckpt_dir, args.outdir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"launch.py: error: cannot create {folder}: {exc}", file=sys.stderr)
            return 1

    if args.nowebui:
        print(f"Set-up complete (python {sys.executable}); --nowebui given, not serving.")
        return 0

    try:
        import app.webui as webui
    except ImportError as exc:
        print(
            f"launch.py: error: cannot import the web UI ({exc}); "
            "run without --skip-install to install the requirements",
            file=sys.stderr,
        )
        return 1
    return webui.serve(args) or 0


if __name__ == "__main__":
    raise SystemExit(main())
