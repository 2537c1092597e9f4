"""The Stable Diffusion x4 upscaler (``x4-upscaler-ema``, latent diffusion super-resolution) as
an upscaler kind: listed and run like any other upscaler (super-resolution tab, extras API,
``python -m core upscale``, hires fix and SD upscale).

Where its checkpoints are found (A1111 has no folder for it), under the models folder:

* ``Stable-diffusion/``: where the checkpoint is usually downloaded beside the others;
* ``LDSR/``: A1111's folder for latent-diffusion super-resolution.

Only checkpoints that *are* x4 upscalers are listed: single files (``.safetensors``, ``.ckpt``)
whose weights detect as the x4 family (``core.models.detection``: 7 UNet input channels, a
noise-level class table, an OpenCLIP text tower), and diffusers folders of a
``StableDiffusionUpscalePipeline``. Anything else in those folders (SD checkpoints, A1111's
CompVis LDSR ``model.ckpt``) is not an upscaler here. Detection reads only a safetensors header
(a ``.ckpt`` is memory-mapped through the weights-only unpickler) and is remembered per file
size and modification time, so listing stays cheap.

A pass runs :func:`core.pipelines.x4_upscale.upscale_x4`: the whole picture's noise is drawn
once from the seed, inputs larger than ``tile`` input pixels go through in overlapping tiles of
that size (``overlap`` pixels shared, feathered together), each tile's latent decoded by the VAE
(itself tiled when it would not fit). Factors other than 4 are reached as for every model: a 4x
pass (two for 16x), then Lanczos to the exact size. The settings (:class:`X4Settings`) default
to an empty prompt, noise level 20, 20 DDIM steps, guidance 9 and seed 0, so a picture always
upscales the same way. With no prompt and no negative prompt the conditional and unconditional
predictions are the same, so guidance is skipped (one UNet call per step instead of two, the
same result up to rounding).
"""
from __future__ import annotations

import dataclasses
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from core.devices import resolve_dtype
from core.errors import NOT_FOUND, EngineError
from core.modelfiles import walk
from core.upscaling.passes import upscale_in_passes
from core.upscaling.registry import ProgressFn, UpscalerInfo, scan_folders

KIND = "x4"
FOLDERS = ("Stable-diffusion", "LDSR")
SUFFIXES = (".safetensors", ".ckpt")
PIPELINE_CLASS = "StableDiffusionUpscalePipeline"
SCALE = 4


@dataclass(frozen=True)
class X4Settings:
    """How the x4 upscaler samples. ``noise_level`` (0..350) is how much noise the low-resolution
    picture gets before the model sees it: higher lets the model invent more detail and stray
    further from the input."""

    prompt: str = ""
    negative_prompt: str = ""
    noise_level: int = 20
    steps: int = 20
    cfg_scale: float = 9.0
    sampler: str = "DDIM"
    seed: int = 0

    def checked(self) -> "X4Settings":
        if not 0 <= int(self.noise_level) <= 350:
            raise EngineError(f"x4 upscaler: noise level must be between 0 and 350, got {self.noise_level}")
        if not 1 <= int(self.steps) <= 1000:
            raise EngineError(f"x4 upscaler: steps must be between 1 and 1000, got {self.steps}")
        if not 0 <= int(self.seed) < 2**32:
            raise EngineError(f"x4 upscaler: seed must be between 0 and 2**32 - 1, got {self.seed}")
        return self

    @property
    def guidance(self) -> float:
        """The guidance scale actually used: 1 (no unconditional pass) when there is no text."""
        return float(self.cfg_scale) if (self.prompt.strip() or self.negative_prompt.strip()) else 1.0


# --- finding x4 checkpoints ------------------------------------------------------------------


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape from a safetensors header alone (no tensor data is read)."""
    from core.loading import safetensors_header

    header = safetensors_header(path)
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict) and "shape" in v}


def _pickle_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a zip-format ``.ckpt``, memory-mapped through torch's weights-only
    unpickler (the weights are not read; legacy non-zip pickles are not looked into)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return {}
    data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        return {}
    return {k: tuple(v.shape) for k, v in data.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def file_is_x4(path: Path) -> bool:
    """Whether a checkpoint file's weights are those of the x4 upscaler (never raises)."""
    from core.loading import normalise_keys
    from core.models.detection import detect

    try:
        shapes = _safetensors_shapes(path) if path.suffix.lower() == ".safetensors" else _pickle_shapes(path)
        if not shapes:
            return False
        return detect(normalise_keys(shapes)).is_upscaler
    except Exception:  # noqa: BLE001 - unreadable, refused or not a diffusion checkpoint: not ours
        return False


def folder_is_x4(path: Path) -> bool:
    """A diffusers folder of the x4 upscaler pipeline."""
    try:
        index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(index, dict) and index.get("_class_name") == PIPELINE_CLASS


def _candidates(base: Path):
    """Checkpoint files and diffusers folders under ``base`` (hidden entries and the files
    inside a diffusers folder left out), sorted."""
    for here, subdirs, files in walk(base):
        subdirs[:] = [d for d in subdirs if not d.startswith(".")]
        if (here / "model_index.json").is_file() and here != base:
            subdirs[:] = []
            yield here
            continue
        for name in sorted(files):
            if not name.startswith(".") and Path(name).suffix.lower() in SUFFIXES:
                yield here / name


class X4Kind:
    """Upscaler kind for the x4 latent-diffusion upscaler; ``settings`` are the defaults every
    upscaler it loads starts with."""

    name = KIND
    folders = FOLDERS

    def __init__(self, settings: X4Settings | None = None):
        self.settings = settings or X4Settings()
        self._lock = threading.Lock()
        self._detected: dict[str, tuple[tuple[int, int], bool]] = {}  # path -> (size, mtime), is x4

    def is_x4(self, path: Path) -> bool:
        path = Path(path)
        try:
            stat = path.stat()
        except OSError:
            return False
        if path.is_dir():
            return folder_is_x4(path)
        if not path.is_file() or path.suffix.lower() not in SUFFIXES:
            return False
        key, stamp = str(path.resolve()), (stat.st_size, stat.st_mtime_ns)
        with self._lock:
            known = self._detected.get(key)
        if known is not None and known[0] == stamp:
            return known[1]
        found = file_is_x4(path)
        with self._lock:
            self._detected[key] = (stamp, found)
        return found

    def list(self, models_root: Path) -> list[UpscalerInfo]:
        return [UpscalerInfo(path.name if path.is_dir() else path.stem, path, KIND)
                for path in scan_folders(models_root, self.folders, _candidates, self.is_x4)]

    def claims(self, path: Path) -> bool:
        return Path(path).suffix.lower() in SUFFIXES and self.is_x4(Path(path))

    def load(self, info: UpscalerInfo, device: torch.device, dtype: torch.dtype | None) -> "X4Upscaler":
        from core.conditioning import make_conditioner
        from core.loading import load_model
        from core.text.tokenizer import load_clip_tokenizer

        if info.path is None or not Path(info.path).exists():
            raise EngineError(f"checkpoint {info.path} not found", kind=NOT_FOUND, label=f"upscaler {info.name}")
        chosen = dtype or resolve_dtype("auto", device)
        model = load_model(info.path, device=device, dtype=chosen)
        if not model.spec.is_upscaler:
            raise EngineError(f"upscaler {info.name}: {Path(info.path).name} is a {model.spec.label} checkpoint, "
                              "not the x4 upscaler")
        conditioner = make_conditioner(model, load_clip_tokenizer(pad_with_eos=False))
        return X4Upscaler(info, model, conditioner, device, chosen, self.settings)


@dataclass
class X4Upscaler:
    info: UpscalerInfo
    model: object  # core.models.stable_diffusion.LatentDiffusion
    conditioner: object
    device: torch.device
    dtype: torch.dtype
    settings: X4Settings
    scale: int = SCALE

    def upscale(self, image: Image.Image, size: tuple[int, int], *, tile: int, overlap: int,
                identity: bool = False, progress: ProgressFn | None = None,
                settings: X4Settings | None = None) -> Image.Image:
        """``settings`` replaces this upscaler's own for one call."""
        chosen = (settings or self.settings).checked()
        return upscale_in_passes(
            image, size, SCALE, identity, lambda img: self.one_pass(img, tile, overlap, chosen, progress)
        )

    def one_pass(self, image: Image.Image, tile: int, overlap: int, settings: X4Settings,
                 progress: ProgressFn | None = None) -> Image.Image:
        """One 4x pass over an RGB picture; ``tile`` <= 0 runs it in one piece."""
        from core.pipelines.x4_upscale import tile_count, upscale_x4

        tile_size = int(tile) if tile and tile > 0 else None
        overlap = max(0, int(overlap))
        total = tile_count(image.width, image.height, tile_size, overlap) * int(settings.steps)
        done = [0]

        def on_step(i, sigma, x, denoised):
            done[0] += 1
            if progress:
                progress(min(done[0], total), total)

        return upscale_x4(
            self.model, image, settings.prompt, int(settings.noise_level), int(settings.steps),
            negative_prompt=settings.negative_prompt, cfg_scale=settings.guidance, seed=int(settings.seed),
            sampler=settings.sampler, conditioner=self.conditioner, tile=tile_size, tile_overlap=overlap,
            callback=on_step,
        )

    def with_settings(self, **changes) -> X4Settings:
        """This upscaler's settings with some fields changed (checked)."""
        return dataclasses.replace(self.settings, **changes).checked()
