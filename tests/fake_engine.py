"""The app's tests' one stand-in for core.engine.Engine: the whole EngineProtocol, without a model.

Jobs paint solid pictures from their params (the colour tells the picture's place in its batch),
report progress as the engine does (core.engine.Progress, with a flat latent for previews) and
save through the engine's own saving code. Every job is recorded in ``calls``. Checkpoints are
names (``checkpoints``; no files) that load in ``load_seconds`` while ``loading`` says how far;
``fail`` makes every job raise it; ``native_size`` is what ``default_size`` says of a checkpoint;
``families`` names the model family (core/models/families.py) of a checkpoint, SD 1.x when unnamed.
tests/test_engine_protocol.py keeps this class to the protocol, as it does the real engine.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np
from PIL import Image

from core.engine import (Engine, GeneratedImage, JobFlags, LoadedModel, Loading, Progress, check_prediction,
                         generation_defaults, save_image_or_say_why)
from core.errors import NOT_FOUND, EngineError
from core.extensions import ExtensionRegistry
from core.hashing import HashCache
from core.models.families import SD1, family_of
from core.text.tokenizer import load_clip_tokenizer
from core.vae_files import AUTOMATIC, list_vae_files, resolve_vae_choice

LOAD_STEPS = 5  # how many times the loading share rises during a load


class Call(NamedTuple):
    """One job the fake was given."""
    kind: str  # "txt2img", "img2img", "sd_upscale" or "extras"
    params: Any  # the job's params (for extras: its ExtrasJob)
    image: Any = None
    mask: Any = None
    save: bool = True


def painted_model(default_size: int | None) -> Any:
    """What the app reads of a loaded model: its spec's native size and UNet input channels."""
    return types.SimpleNamespace(spec=types.SimpleNamespace(default_size=default_size, label="fake",
                                                            unet=types.SimpleNamespace(in_channels=4)))


class FakeEngine:
    """Folders under ``root`` as the engine lays them out; nothing there until a job saves."""

    def __init__(self, root: Path, checkpoints: tuple[str, ...] | list[str] = ("sd15.safetensors", "sub/other.ckpt"),
                 fail: BaseException | None = None, steps_delay: float = 0.01, load_seconds: float = 0.0,
                 native_size: int | None = None, families: dict[str, str] | None = None):
        self.models_dir = root / "models"
        self.ckpt_dir = self.models_dir / "Stable-diffusion"
        self.lora_dir = self.models_dir / "Lora"
        self.embeddings_dir = self.models_dir / "embeddings"
        self.vae_dir = self.models_dir / "VAE"
        self.vae = AUTOMATIC
        self.tokenizer = load_clip_tokenizer()  # count_tokens is the engine's own
        self.output_dir = root / "outputs"
        self.hashes = HashCache(None)
        self.extensions = ExtensionRegistry(self)
        self.loaded: LoadedModel | None = None
        self.loading: Loading | None = None
        self.prediction = "auto"
        self.zero_terminal_snr: bool | None = None
        self.flags = JobFlags()
        self.checkpoints = list(checkpoints)
        self.fail = fail
        self.steps_delay = steps_delay
        self.load_seconds = load_seconds
        self.native_size = native_size
        self.families = dict(families or {})
        self.calls: list[Call] = []
        self.interrupts = 0
        self._lock = threading.Lock()
        self._upscaler_cache = None  # the real extras' model cache, made on first use (it imports torch)

    # --- checkpoints -------------------------------------------------------------------

    def list_checkpoints(self) -> list[str]:
        return list(self.checkpoints)

    def resolve_checkpoint(self, name: str, allow_paths: bool = False, field: str = "checkpoint") -> Path:
        if allow_paths and Path(name).is_absolute():
            return Path(name)
        if name not in self.list_checkpoints():
            raise EngineError(f"{name!r} not found in {self.ckpt_dir}", field, NOT_FOUND)
        return self.ckpt_dir / name

    def load(self, name: str, allow_paths: bool = False, *, prediction: str | None = None,
             zero_terminal_snr: bool | None = None, progress: Callable[[float], None] | None = None) -> LoadedModel:
        if prediction is not None:
            self.prediction = check_prediction(prediction)
        if zero_terminal_snr is not None:
            self.zero_terminal_snr = bool(zero_terminal_snr)
        path = self.resolve_checkpoint(name, allow_paths)
        overrides = (self.prediction, self.zero_terminal_snr)
        if self.loaded is not None and self.loaded.path == path and self.loaded.overrides == overrides:
            return self.loaded
        self.unload()
        status = self.loading = Loading(path.stem, path)
        try:
            for step in range(1, LOAD_STEPS + 1):
                time.sleep(self.load_seconds / LOAD_STEPS)
                status.fraction = step / LOAD_STEPS
                if progress is not None:
                    progress(status.fraction)
        finally:
            self.loading = None
        self.loaded = LoadedModel(path=path, name=path.stem, model=painted_model(self.native_size), overrides=overrides)
        return self.loaded

    def unload(self, keep_refiner: bool = False) -> None:
        self.loaded = None

    def refresh_embeddings(self) -> None:
        """Painted models have no text encoder: nothing to read again."""

    job_model = Engine.job_model  # the engine's own choice: the asked, the loaded, else the first listed

    def default_size(self, name: str | None = None, allow_paths: bool = False) -> int | None:
        if name is None:
            return self.loaded.model.spec.default_size if self.loaded else None
        self.resolve_checkpoint(name, allow_paths)
        return self.native_size

    def generation_defaults(self, name: str | None = None, allow_paths: bool = False) -> dict[str, Any]:
        """The engine's answer for the family ``families`` gives the checkpoint (or the loaded one)."""
        if name is None and self.loaded is None:
            return generation_defaults(None, None)
        path = self.resolve_checkpoint(name, allow_paths) if name is not None else self.loaded.path
        family = next((family for listed, family in self.families.items() if self.ckpt_dir / listed == path), SD1)
        return generation_defaults(family_of(family), self.default_size(name, allow_paths))

    def model_hash(self) -> str | None:
        if self.loaded is not None and self.loaded.hash is None:
            self.loaded.hash = hashlib.sha256(self.loaded.name.encode()).hexdigest()[:10]
        return self.loaded.hash if self.loaded else None

    def list_vaes(self) -> list[str]:
        return list_vae_files(self.vae_dir)

    def apply_vae(self) -> None:
        """The choice judged as the engine judges it; no weights to swap, the file is recorded."""
        if self.loaded is not None:
            self.loaded.vae_path = resolve_vae_choice(self.vae, self.loaded.path, self.vae_dir)

    count_tokens = Engine.count_tokens  # the engine's own counting, with no embeddings loaded

    # --- jobs --------------------------------------------------------------------------

    def exclusive(self) -> threading.Lock:
        return self._lock

    def interrupt(self) -> None:
        self.interrupts += 1
        self.flags.interrupted = True

    def skip(self) -> None:
        self.flags.skipped = True

    def txt2img(self, params, progress: Callable[[Progress], None] | None = None, save: bool = True,
                allow_paths: bool = False) -> list[GeneratedImage]:
        return self._job(Call("txt2img", params, save=save), progress, allow_paths)

    def img2img(self, params, image, mask=None, progress: Callable[[Progress], None] | None = None, save: bool = True,
                allow_paths: bool = False) -> list[GeneratedImage]:
        return self._job(Call("img2img", params, image, mask, save), progress, allow_paths,
                         notes=("a note from the engine",))

    def sd_upscale(self, params, image, upscaler: str = "Lanczos", scale: float = 2.0, overlap: int = 64,
                   progress: Callable[[Progress], None] | None = None, save: bool = True) -> list[GeneratedImage]:
        size = (round(image.width * scale), round(image.height * scale))
        return self._job(Call("sd_upscale", params, image, None, save), progress, False, size=size, folder="img2img")

    def extras(self, image, job, progress: Callable[[int, int], None] | None = None,
               source_infotext: str | None = None):
        """The engine's own upscale job (the built-in resamplers need no model), recorded."""
        from core.upscaling import ModelCache
        from core.upscaling.extras import run_extras

        self.calls.append(Call("extras", job, image))
        if self.fail is not None:
            raise self.fail
        if self._upscaler_cache is None:
            self._upscaler_cache = ModelCache()
        return run_extras(image, job, models_root=self.models_dir, device="cpu", cache=self._upscaler_cache,
                          progress=progress, source_infotext=source_infotext)

    def _job(self, call: Call, progress, allow_paths: bool, notes: tuple[str, ...] = (), size: tuple[int, int] | None = None,
             folder: str | None = None) -> list[GeneratedImage]:
        """The engine's batch loop without a model: lock, model, steps (with interrupt and
        skip), then one solid picture per seed, saved in the engine's layout when ``save``."""
        self.calls.append(call)
        params = call.params
        with self._lock:
            self.flags = JobFlags()
            if self.fail is not None:
                raise self.fail
            loaded = self.job_model(params.checkpoint, allow_paths)
            width, height = size or (params.width, params.height)
            out_dir = self.output_dir / f"{folder or call.kind}-images" / dt.date.today().isoformat()
            started = time.monotonic()
            results = []
            for batch in range(params.batch_count):
                self.flags.skipped = False
                if not self._steps(params, batch, started, progress):
                    if self.flags.interrupted:
                        break
                    continue
                for index in range(params.batch_size):
                    seed = (params.seed if params.seed >= 0 else 7) + batch * params.batch_size + index
                    picture = Image.new("RGB", (width, height), (40 * index, 90, 160))
                    infotext = (f"{params.prompt}\nSteps: {params.steps}, Sampler: {params.sampler}, "
                                f"CFG scale: {params.cfg_scale}, Seed: {seed}, Size: {width}x{height}, "
                                f"Model hash: {self.model_hash()}, Model: {loaded.name}")
                    path, save_error = (save_image_or_say_why(picture, out_dir, seed, infotext) if call.save
                                        else (None, None))
                    results.append(GeneratedImage(image=picture, seed=seed, infotext=infotext, path=path,
                                                  notes=list(notes), save_error=save_error))
            return results

    def _steps(self, params, batch: int, started: float, progress) -> bool:
        """Sampling's time and progress reports; False once interrupt or skip ends the batch."""
        latent = np.full((params.batch_size, 4, params.height // 8, params.width // 8), 0.5, np.float32)
        for step in range(params.steps):
            if self.flags.interrupted or self.flags.skipped:
                return False
            time.sleep(self.steps_delay)
            if progress is not None:
                progress(Progress(step + 1, params.steps, batch, params.batch_count, started, latent))
        return True


def engine_class(root: Path, made: list[dict], **options) -> Callable[..., FakeEngine]:
    """A stand-in for the class core.engine.Engine where serve() builds the engine: each call's
    keyword arguments are appended to ``made``, and a FakeEngine over ``root`` (given
    ``options``) is what it builds."""
    def build(**arguments) -> FakeEngine:
        made.append(arguments)
        return FakeEngine(root, **options)

    return build
