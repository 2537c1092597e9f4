"""Start the Stable Diffusion studio: the web page, and with --api the REST API beside it.

    python launch.py [--api] [--nowebui] [--listen --api-auth USER:PASS] [--port 7860] [--device auto] ...

On first start this creates ``venv/`` and installs requirements.txt (and
requirements-nodeps.txt with ``--no-deps``) into it (see bootstrap.py), then
restarts itself inside that environment.
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
        "--compile",
        action="store_true",
        help="compile the UNet with torch.compile (inductor; a C++ compiler on the CPU, triton on CUDA): "
        "the first steps at each new size are slow, the rest faster; without a working compiler the "
        "model runs uncompiled, with a warning in the log",
    )
    parser.add_argument(
        "--offload",
        choices=["auto", "never", "always"],
        default="auto",
        help="SD 3.x / FLUX.1 on a GPU: keep the text encoders in CPU memory and stream the transformer's "
        "blocks through the GPU when the model does not fit it (auto), never, or always (least GPU memory, "
        "slowest); see docs/MODELS_FLOW.md (default: auto)",
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
        "--allowed-dir",
        type=Path,
        action="append",
        default=None,
        metavar="DIR",
        help="a folder the page may read and write by name (super-resolution batches); repeatable "
             "(default: the --outdir folder and inputs/ beside launch.py)",
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
        help="do not serve the web page; with --api serve the API alone, without it set up and exit",
    )
    parser.add_argument(
        "--api",
        action="store_true",
        help="serve the AUTOMATIC1111-compatible REST API at /sdapi/v1 (docs at /docs) beside the page",
    )
    parser.add_argument(
        "--api-auth",
        metavar="USER:PASS[,USER2:PASS2]",
        default=None,
        help="require HTTP Basic auth with one of these logins for everything served (API, docs and page)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow --listen without --api-auth (anyone on the network can then use the server)",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also serve requests whose Host header is NAME (a host name or IP address, any port); repeatable. "
             "Always served: 127.0.0.1, localhost, [::1]; with --listen also this machine's name and any IP address",
    )
    parser.add_argument(
        "--lora-dir",
        type=Path,
        default=None,
        help="folder with LoRA files (default: models/Lora)",
    )
    parser.add_argument(
        "--download-model",
        nargs="?",
        const="default",
        default=None,
        metavar="URL",
        help="download a checkpoint into the checkpoint folder first (resumable, sha256-checked; "
             "default: Stable Diffusion 1.5 pruned-emaonly)",
    )
    parser.add_argument(
        "--download-sha256",
        default=None,
        help="expected sha256 of the --download-model file (known for the default URL)",
    )
    parser.add_argument(
        "--ui-settings-file",
        type=Path,
        default=None,
        help="JSON file where the API's settings (/sdapi/v1/options) are kept (default: config.json beside "
             "launch.py, or in $SD_STUDIO_DATA_DIR, shared with the page's settings)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = serving_problem(args)
    if problem:
        print(f"launch.py: error: {problem}", file=sys.stderr)
        return 2

    # Before anything imports torch: large tensors on huge pages (core/allocation.py says why).
    from core.allocation import use_huge_pages

    use_huge_pages()
    bootstrap.ensure_environment(["requirements.txt"], extra_no_deps="requirements-nodeps.txt",
                                 skip_install=args.skip_install)

    args.ckpt_dir = args.ckpt_dir.expanduser().resolve()
    args.outdir = args.outdir.expanduser().resolve()
    if args.ui_settings_file is not None:
        args.ui_settings_file = args.ui_settings_file.expanduser().resolve()
    for folder in (args.ckpt_dir, args.outdir):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"launch.py: error: cannot create {folder}: {exc}", file=sys.stderr)
            return 1

    if args.download_model:
        status = download_model(args)
        if status:
            return status

    if args.nowebui and not args.api:
        print(f"Set-up complete (python {sys.executable}); --nowebui given, not serving.")
        return 0

    try:
        import app.server as server
    except ImportError as exc:
        print(
            f"launch.py: error: cannot import the server ({exc}); "
            "run without --skip-install to install the requirements",
            file=sys.stderr,
        )
        return 1
    return server.serve(args) or 0


def download_model(args: argparse.Namespace) -> int:
    """Fetch a checkpoint with a progress line; offline, say so once and go on with what is there."""
    from urllib.parse import unquote, urlparse

    from core.download import DEFAULT_MODEL_SHA256, DEFAULT_MODEL_URL, download, network_reachable
    from core.errors import EngineError

    url = DEFAULT_MODEL_URL if args.download_model == "default" else args.download_model
    sha256 = args.download_sha256 or (DEFAULT_MODEL_SHA256 if url == DEFAULT_MODEL_URL else None)
    name = Path(unquote(urlparse(url).path)).name or "downloaded-model.safetensors"
    target = args.ckpt_dir / name
    if target.exists():
        print(f"{target.name} is already in {args.ckpt_dir}; not downloading.")
        return 0
    if not network_reachable(url):
        print("Offline: cannot reach the download server; using the checkpoints already present (the demo model if none).")
        return 0

    def show(p):
        if p.total:
            print(f"\rdownloading {name}: {p.done / 2**20:.0f} / {p.total / 2**20:.0f} MB ({p.fraction:.0%})", end="", flush=True)

    try:
        download(url, target, sha256, progress=show)
    except EngineError as exc:
        print(f"\nlaunch.py: error: {exc}", file=sys.stderr)
        return 1
    print(f"\nSaved {target}")
    return 0


def serving_problem(args: argparse.Namespace) -> str | None:
    """Why these arguments must not start a server, in one line; checked before any set-up."""
    if not 0 < args.port < 65536:
        return f"--port {args.port} is not a valid port"
    if args.api_auth is not None:
        for index, item in enumerate(part.strip() for part in args.api_auth.split(",")):
            user, sep, password = item.partition(":")
            if not (user and sep and password):
                return f"--api-auth: entry {index + 1} is not USER:PASSWORD"
    serving = args.api or not args.nowebui
    if serving and args.listen and not args.api_auth and not args.insecure:
        return ("--listen would serve on every network interface without a password; "
                "give --api-auth USER:PASSWORD (or --insecure to serve without one)")
    return None


if __name__ == "__main__":
    raise SystemExit(main())
