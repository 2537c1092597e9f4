"""The engine object: one loaded model on one device, passed explicitly to whoever generates.

The UI, the API and the command line all hold an ``Engine``; there is no module-level state.
A lock makes jobs run one at a time on the device.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from core.devices import resolve_device, resolve_dtype
from core.errors import NOT_FOUND, TOO_LARGE, UNAVAILABLE, EngineError
from core.hashing import HashCache
from core.speed import prepare_for_speed
from core.conditioning import EncodedPromptCache, make_conditioner
from core.demo import DEMO_CHECKPOINT, is_demo, with_demo
from core.embeddings import EmbeddingDatabase
from core.extensions import ExtensionRegistry, Job
from core.images import save_png
from core.infotext import create_infotext, format_number
from core.loading import CHECKPOINT_SUFFIXES, load_model, read_spec
from core.modelfiles import has_suffix, name_in_folder, walk
from core.offload import OFFLOAD_MODES, load_device, place
from core.models.families import Family, LatentFormat
from core.params import MAX_SIZE, GenerationParams
from core.pipelines.common import resolve_seed, to_pil
from core.pipelines.hires import hires_fields, hires_fix
from core.pipelines.img2img import img2img, prepare_input
from core.pipelines.masking import FILL_MODES, flatten, open_image
from core.pipelines.sampling_run import Refiner
from core.pipelines.seamless import seamless_tiling
from core.pipelines.txt2img import txt2img
from core.prompts.parser import extract_extra_networks
from core.sampling.flow import FLOW_AUTOMATIC
from core.sampling.schedules import AUTOMATIC as AUTOMATIC_SCHEDULE
from core.text.tokenizer import load_clip_tokenizer
from core.vae_files import AUTOMATIC, fitted_vae_state, list_vae_files, read_vae_file, resolve_vae_choice, swap_vae_state

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PREDICTIONS = ("auto", "eps", "v")


@dataclass
class Progress:
    step: int  # steps done in the current batch
    steps: int
    batch: int  # batches done
    batches: int
    started: float
    latent: torch.Tensor | None = None  # the current denoised estimate, for previews
    latent_format: LatentFormat | None = None  # the running model's (its preview colours)

    @property
    def fraction(self) -> float:
        return min(1.0, (self.batch + self.step / max(self.steps, 1)) / max(self.batches, 1))

    @property
    def eta_seconds(self) -> float | None:
        done = self.fraction
        return (time.monotonic() - self.started) * (1 - done) / done if done > 0 else None


@dataclass
class GeneratedImage:
    image: object  # PIL.Image.Image
    seed: int
    infotext: str
    path: Path | None = None
    notes: list[str] = field(default_factory=list)  # things the user should know (mask resized, ...)
    # why saving failed (a full or read-only folder): the image is only in memory then
    save_error: str | None = None
    # made from the denoised estimate at the step an interrupt stopped: shown, not saved (as
    # A1111 with its default save_incomplete_images off)
    incomplete: bool = False


class _Stop(Exception):
    """Raised from the step callback to end sampling early."""


@dataclass
class Loading:
    """A checkpoint being loaded: its name, file and the share of its weights read so far."""
    name: str
    path: Path
    fraction: float = 0.0


@dataclass
class LoadedModel:
    path: Path
    name: str
    model: torch.nn.Module
    embeddings: EmbeddingDatabase | None = None
    hash: str | None = None
    # What the weights cannot tell, as asked for at load time: (prediction, zero_terminal_snr).
    overrides: tuple = ("auto", None)
    # A separate VAE in place of the checkpoint's own (core/vae_files.py): its file and short
    # hash (None: the checkpoint's own), and the checkpoint's own VAE tensors kept to put back.
    vae_path: Path | None = None
    vae_hash: str | None = None
    own_vae: dict | None = None


@dataclass
class JobFlags:
    interrupted: bool = False
    skipped: bool = False


def _known_size(spec) -> int | None:
    """``spec.default_size``, or None for an SD 2.x file that says nothing of eps or v (read
    from its header, before its test pass: its size depends on which it is)."""
    if spec.family_info.detects_prediction and spec.prediction_source == "default" and not spec.native_size:
        return None
    return spec.default_size


def generation_defaults(family: Family | None, size: int | None) -> dict[str, Any]:
    """The generation settings a checkpoint of ``family`` (None: unknown, taken as a UNet one)
    starts from, as Forge sets them up when one is chosen:

    * "size": its picture size (Engine.default_size), None when unknown;
    * "steps", "cfg_scale": a flow family's own (FlowFacts: SD 3.x 28 / 5, FLUX.1 dev 20 / 1,
      schnell 4 / 1); None for the UNet families, which leave them to the user's defaults;
    * "distilled_cfg_scale": True when the network takes Forge's Distilled CFG Scale (FLUX.1 dev);
    * "samplers": the sampler names it takes (the flow families refuse the SDE, Restart,
      DDIM-type and LCM samplers)."""
    from core.sampling.flow import FLOW_SAMPLERS
    from core.sampling.samplers import SAMPLERS

    flow = family.flow if family is not None else None
    return {
        "size": size,
        "steps": flow.default_steps if flow else None,
        "cfg_scale": flow.default_cfg if flow else None,
        "distilled_cfg_scale": bool(flow and flow.distilled_guidance),
        "samplers": list(FLOW_SAMPLERS if flow else SAMPLERS),
    }


class Engine:
    def __init__(
        self,
        device: str = "auto",
        precision: str = "auto",
        ckpt_dir: str | Path | None = None,
        output_dir: str | Path | None = None,
        hash_cache: str | Path | None = None,
        embeddings_dir: str | Path | None = None,
        extensions_dir: str | Path | None = None,
        disabled_extensions: set[str] | frozenset = frozenset(),
        models_dir: str | Path | None = None,
        lora_dir: str | Path | None = None,
        compile: bool = False,
        offload: str = "auto",
    ):
        """``compile``: compile each loaded UNet with torch.compile (inductor), falling back to
        eager execution with a logged warning where no compiler works (core/speed.py).
        ``offload``: "auto", "never" or "always": whether SD 3.x / FLUX.1 models that do not fit
        the accelerator keep their text encoders in CPU memory and stream their transformer's
        blocks (core/offload.py; "always" streams whatever fits)."""
        self.device = resolve_device(device)
        self.compile = compile
        if offload not in OFFLOAD_MODES:
            raise EngineError(f"must be one of {', '.join(OFFLOAD_MODES)}, got {offload!r}", "offload")
        self.offload = offload
        self.dtype = resolve_dtype(precision, self.device)
        # Upscaler models follow a precision that was asked for; under auto each kind picks the
        # device's auto precision where its models support it (fp16 or else bf16 on GPUs).
        self.upscaler_dtype = None if precision == "auto" else self.dtype
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else ROOT / "models" / "Stable-diffusion"
        self.output_dir = Path(output_dir) if output_dir else ROOT / "outputs"
        self.models_dir = Path(models_dir) if models_dir else ROOT / "models"
        self.embeddings_dir = Path(embeddings_dir) if embeddings_dir else self.models_dir / "embeddings"
        self.lora_dir = Path(lora_dir) if lora_dir else self.models_dir / "Lora"
        self.vae_dir = self.models_dir / "VAE"
        # SD 3.x / FLUX.1 files without text encoders or VAE take them from here, by content
        # (ComfyUI's and Forge's folders), with the T5 tokenizer.
        self.text_encoder_dir = self.models_dir / "text_encoder"
        # A1111's sd_vae: "Automatic", "None" or a file in vae_dir; it outlives checkpoint changes
        # and is applied at every load and job (apply_vae: at once).
        self.vae = AUTOMATIC
        self.hashes = HashCache(Path(hash_cache) if hash_cache else ROOT / "models" / ".hash-cache.json")
        self.loaded: LoadedModel | None = None
        self.loading: Loading | None = None  # while a checkpoint loads, for progress displays
        # Overrides for what a checkpoint's weights cannot tell (core/loading.py): "auto", "eps"
        # or "v"; zero-terminal-SNR None = as the checkpoint says, True/False = forced. The main
        # checkpoint is loaded again when they change; a refiner is always loaded as it says.
        self.prediction = "auto"
        self.zero_terminal_snr: bool | None = None
        # The SDXL refiner (or any second checkpoint) of the last job that asked for one, kept
        # for the next; on an accelerator the model that is not sampling waits in CPU memory.
        self.refiner: LoadedModel | None = None
        self.refiner_offload = self.device.type != "cpu"
        self.demo_checkpoint = DEMO_CHECKPOINT
        from core.upscaling.x4 import X4Kind

        self._x4 = X4Kind()  # tells x4 upscaler checkpoints apart, to keep them out of the list
        self.flags = JobFlags()
        self._lock = threading.Lock()
        self.tokenizer = load_clip_tokenizer()
        from core.upscaling import ModelCache

        self.upscaler_cache = ModelCache()  # the last upscaler model, kept between jobs
        self.encoded_prompts = EncodedPromptCache()  # prompts encoded by earlier batches and jobs
        self.extensions = ExtensionRegistry(self)
        self.extensions.load_folder(Path(extensions_dir) if extensions_dir else ROOT / "extensions", set(disabled_extensions))

    # --- checkpoints -------------------------------------------------------------------

    def list_checkpoints(self) -> list[str]:
        """Checkpoint files and diffusers folders under ckpt_dir, as names relative to it, then
        the bundled demo model (always listed; see core/demo.py)."""
        return with_demo(self._own_checkpoints(), self.demo_checkpoint)

    def _own_checkpoints(self) -> list[str]:
        found = []
        # Files and folders the user linked in are followed (walk): they are the user's.
        for directory, subdirs, files in walk(self.ckpt_dir):
            if directory != self.ckpt_dir and (directory / "model_index.json").is_file():
                found.append(directory)  # a diffusers folder: listed itself, its files are parts
                subdirs[:] = []
                continue
            found.extend(directory / name for name in files
                         if has_suffix(name, CHECKPOINT_SUFFIXES) and (directory / name).is_file())
        # The x4 upscaler often sits among the checkpoints but only upscales: it is listed with
        # the upscalers instead (core/upscaling/x4.py; header reads, cached per file).
        return [path.relative_to(self.ckpt_dir).as_posix() for path in sorted(found) if not self._x4.is_x4(path)]

    def resolve_checkpoint(self, name: str, allow_paths: bool = False, field: str = "checkpoint") -> Path:
        """A name from list_checkpoints() (or, for trusted callers, any path) -> a checked path.
        A1111's title form "name [short hash]" (as infotexts write a refiner) is accepted.

        Names from requests are confined to ckpt_dir as written: no '..', no absolute paths.
        A file or folder the user linked into ckpt_dir is followed wherever it points (the
        name is checked, not the link's target). Errors name ``field``."""
        candidate = Path(name)
        if allow_paths and candidate.exists():
            return candidate
        path = name_in_folder(self.ckpt_dir, name, field, "checkpoint folder")
        if not path.exists() and is_demo(name) and self.demo_checkpoint.is_file():
            return self.demo_checkpoint
        if not path.exists():
            titled = _TITLE_HASH.fullmatch(name)
            if titled:
                candidate = Path(titled.group(1))
            matches = [n for n in self.list_checkpoints()
                       if Path(n).stem == candidate.stem or n in (name, candidate.as_posix())]
            if not matches:
                raise EngineError(f"{name!r} not found in {self.ckpt_dir}", field, NOT_FOUND)
            if is_demo(matches[0]) and not (self.ckpt_dir / matches[0]).exists():
                return self.demo_checkpoint
            path = name_in_folder(self.ckpt_dir, matches[0], field, "checkpoint folder")
        return path

    def load(
        self, name: str, allow_paths: bool = False, *, prediction: str | None = None, zero_terminal_snr: bool | None = None,
        progress: Callable[[float], None] | None = None,
    ) -> LoadedModel:
        """Make ``name`` the loaded model (a no-op when it already is, with the same overrides).
        The previous model is let go first, so only one is held at a time.

        ``prediction`` ("auto", "eps", "v") and ``zero_terminal_snr`` (True/False) become the
        engine's settings (``self.prediction``, ``self.zero_terminal_snr``) when given; left
        out, the current settings apply. A change of either loads the checkpoint again.
        While it loads, ``self.loading`` tells its name and the share read, and
        ``progress(fraction)`` is called as that share rises (ending at 1.0)."""
        if prediction is not None:
            self.prediction = check_prediction(prediction)
        if zero_terminal_snr is not None:
            self.zero_terminal_snr = bool(zero_terminal_snr)
        path = self.resolve_checkpoint(name, allow_paths)
        overrides = self.model_overrides()
        if self.loaded and self.loaded.path == path and self.loaded.overrides == overrides:
            self._apply_vae(self.loaded)
            return self.loaded
        self.unload(keep_refiner=True)
        status = self.loading = Loading(_model_name(path), path)

        def report(fraction: float) -> None:
            status.fraction = fraction
            if progress is not None:
                progress(fraction)

        try:
            self.extensions.run("before_model_load", path)
            # Offloading (core/offload.py): a flow model is read into CPU memory, then placed.
            model = load_model(path, device=load_device(self.offload, self.device, path), dtype=self.dtype,
                               prediction=overrides[0], zero_terminal_snr=overrides[1], progress=report,
                               parts_folders=self.parts_folders)
            prepare_for_speed(model, self.device, self.compile)
            place(model, self.device, self.offload)
            self.loaded = LoadedModel(path=path, name=_model_name(path), model=model, embeddings=self._embeddings(model),
                                      overrides=overrides)
            self.extensions.run("after_model_load", self.loaded)
        finally:
            self.loading = None
        self._apply_vae(self.loaded)
        return self.loaded

    def job_model(self, checkpoint: str | None = None, allow_paths: bool = False) -> LoadedModel:
        """The model a job with ``checkpoint`` uses, loaded: that checkpoint; None: the loaded
        one (again if the overrides changed), else the first listed. Hold exclusive() around it."""
        if checkpoint:
            return self.load(checkpoint, allow_paths)
        if self.loaded is not None:
            return self.load(str(self.loaded.path), allow_paths=True)
        names = self.list_checkpoints()
        if not names:
            raise EngineError(f"no checkpoint: put a model in {self.ckpt_dir}", kind=UNAVAILABLE)
        return self.load(names[0])

    @property
    def parts_folders(self) -> tuple[Path, ...]:
        """Where SD 3.x / FLUX.1 parts are looked for: models/text_encoder, ComfyUI's older
        models/clip, models/VAE."""
        return (self.text_encoder_dir, self.models_dir / "clip", self.vae_dir)

    # --- VAE ---------------------------------------------------------------------------

    def list_vaes(self) -> list[str]:
        """The VAE files in vae_dir, as names relative to it (the choices beside Automatic, None)."""
        return list_vae_files(self.vae_dir)

    def apply_vae(self) -> None:
        """Give the loaded model the VAE ``self.vae`` names now (with none loaded, it applies at
        the next load). A file that cannot be read or does not fit this model is refused
        (EngineError) and the model keeps the VAE it had. Hold exclusive() around it."""
        if self.loaded is not None:
            self._apply_vae(self.loaded)

    def _apply_vae(self, loaded: LoadedModel) -> None:
        wanted = resolve_vae_choice(self.vae, loaded.path, self.vae_dir)
        if wanted == loaded.vae_path:
            return
        vae = loaded.model.vae
        if wanted is None:
            swap_vae_state(vae, loaded.own_vae)
            loaded.own_vae, loaded.vae_path, loaded.vae_hash = None, None, None
            return
        state = fitted_vae_state(vae, read_vae_file(wanted), wanted.name)  # raises before anything changes
        before = swap_vae_state(vae, state)
        if loaded.own_vae is None:
            loaded.own_vae = before
        loaded.vae_path, loaded.vae_hash = wanted, None
        log.info("VAE %s in use for %s", wanted.name, loaded.name)

    def _vae_fields(self, loaded: LoadedModel) -> dict[str, str | None]:
        """A1111's infotext fields of the VAE in use: ``VAE hash`` and ``VAE`` (the file's name);
        None for the checkpoint's own, which also drops the fields a pasted infotext brought."""
        if loaded.vae_path is None:
            return {"VAE hash": None, "VAE": None}
        if loaded.vae_hash is None:
            loaded.vae_hash = self.hashes.short(loaded.vae_path)
        return {"VAE hash": loaded.vae_hash, "VAE": loaded.vae_path.name}

    # --- prompts -------------------------------------------------------------------------

    def count_tokens(self, prompt: str, steps: int = 20) -> tuple[int, int]:
        """(tokens, limit) of ``prompt`` as A1111's counter shows them ("80/150"), counted by
        the encoder's own tokenizer and chunking, with the loaded model's embeddings."""
        from core.conditioning import prompt_token_count

        embeddings = self.loaded.embeddings if self.loaded is not None else None
        return prompt_token_count(self.tokenizer, prompt, steps, embeddings)

    def model_overrides(self) -> tuple[str, bool | None]:
        return check_prediction(self.prediction), self.zero_terminal_snr

    def _embeddings(self, model) -> EmbeddingDatabase:
        return EmbeddingDatabase(self.embeddings_dir, self.tokenizer, model.spec.text.hidden_size, key=model.spec.embedding_key)

    def refresh_embeddings(self) -> None:
        """Read the embeddings folder again for the loaded model and the kept refiner: files
        added, changed or removed since they loaded count from the next job (the encoded-prompt
        cache follows the new database). Hold exclusive() around it."""
        for held in (self.loaded, self.refiner):
            if held is not None:
                held.embeddings = self._embeddings(held.model)

    def unload(self, keep_refiner: bool = False) -> None:
        previous, self.loaded = self.loaded, None
        if previous is not None:
            self.extensions.run("model_unloaded", previous)
        if not keep_refiner:
            self.refiner = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def default_size(self, name: str | None = None, allow_paths: bool = False) -> int | None:
        """The picture size checkpoint ``name`` was trained at (ModelSpec.default_size: 512 for
        SD 1.x, 768 for SD 2.x v-prediction, 1024 for SDXL, or what the file's metadata says),
        with the current overrides; None (or left out): the loaded model. Read from the file's
        header without loading it; None when that cannot tell (an SD 2.x file with no hint of
        eps or v, until it is loaded and its test pass has run)."""
        spec = self._header_spec(name, allow_paths)
        return _known_size(spec) if spec is not None else None

    def generation_defaults(self, name: str | None = None, allow_paths: bool = False) -> dict[str, Any]:
        """What a page sets up for checkpoint ``name`` before anything is generated with it, read
        as default_size reads the size (the file's header; None: the loaded model, and when
        none is, the answer for a UNet checkpoint of unknown size). See ``generation_defaults``."""
        spec = self._header_spec(name, allow_paths)
        if spec is None:
            return generation_defaults(None, None)
        return generation_defaults(spec.family_info, _known_size(spec))

    def _header_spec(self, name: str | None, allow_paths: bool):
        """Checkpoint ``name``'s ModelSpec: the loaded model's when it is that file with the
        current overrides, else read from the file's header; None (or left out): the loaded
        model's, None when nothing is loaded."""
        if name is None:
            return self.loaded.model.spec if self.loaded else None
        path = self.resolve_checkpoint(name, allow_paths)
        if self.loaded and self.loaded.path == path and self.loaded.overrides == self.model_overrides():
            return self.loaded.model.spec
        prediction, zero_terminal_snr = self.model_overrides()
        return read_spec(path, prediction=prediction, zero_terminal_snr=zero_terminal_snr, parts_folders=self.parts_folders)

    # --- the refiner --------------------------------------------------------------------

    def load_refiner(self, name: str, allow_paths: bool = False) -> LoadedModel | None:
        """The second checkpoint of a refiner job, loaded once and kept for the next job (on
        an accelerator it waits in CPU memory until it samples). Errors name refiner_checkpoint.
        None when ``name`` is the loaded checkpoint itself (nothing to switch to, as A1111)."""
        path = self.resolve_checkpoint(name, allow_paths, field="refiner_checkpoint")
        if self.loaded is not None and self.loaded.path == path:
            return None
        if self.loaded is not None and self.loaded.model.spec.family_info.flow is not None:
            raise EngineError(f"{self.loaded.model.spec.label} checkpoints take no refiner", "refiner_checkpoint", UNAVAILABLE)
        if self.refiner is not None and self.refiner.path == path:
            return self.refiner
        self.free_refiner()
        model = load_model(path, device="cpu" if self.refiner_offload else self.device, dtype=self.dtype)
        spec = model.spec
        if spec.family_info.flow is not None:
            raise EngineError(f"{path.name} is {spec.label}: a refiner must be a UNet checkpoint", "refiner_checkpoint")
        if spec.is_upscaler or model.takes_image_conditioning:
            raise EngineError(f"{path.name} is {spec.label} ({'an upscaler' if spec.is_upscaler else 'an inpainting model'}); "
                              "a refiner must be a plain text-to-image checkpoint", "refiner_checkpoint")
        if self.loaded is not None and model.vae.config.embed_dim != self.loaded.model.vae.config.embed_dim:
            raise EngineError(f"{path.name} ({spec.label}) works in another latent space than "
                              f"{self.loaded.name} ({self.loaded.model.spec.label})", "refiner_checkpoint")
        prepare_for_speed(model, self.device, self.compile)  # once it is known to be a usable refiner
        self.refiner = LoadedModel(path=path, name=_model_name(path), model=model, embeddings=self._embeddings(model))
        return self.refiner

    def free_refiner(self) -> None:
        if self.refiner is not None:
            self.refiner = None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def refiner_title(self) -> str | None:
        """The refiner as A1111's infotext names it: "name [short hash]"."""
        if self.refiner is None:
            return None
        if self.refiner.hash is None:
            self.refiner.hash = self.hashes.short(self.refiner.path)
        return f"{self.refiner.name} [{self.refiner.hash}]"

    def _refiner_stage(self, params: GenerationParams, allow_paths: bool) -> Refiner | None:
        """The job's Refiner (with its own prompt encoder and embeddings), or None; the cached
        refiner is let go when a job asks for none."""
        if not params.refiner_checkpoint or params.refiner_checkpoint == "None":
            self.free_refiner()
            return None
        refiner = self.load_refiner(params.refiner_checkpoint, allow_paths)
        if refiner is None:
            return None
        conditioner = make_conditioner(refiner.model, self.tokenizer, refiner.embeddings, params.clip_skip, params.emphasis,
                                       self._check_stop)
        base = self.loaded.model

        def take_over():
            if self.refiner_offload:
                base.to("cpu")
                refiner.model.to(self.device)

        return Refiner(refiner.model, conditioner, float(params.refiner_switch_at), on_switch=take_over)

    def _models_home(self, stage: Refiner | None) -> None:
        """Back to the resting places after a refiner took over: the main model on the device,
        the refiner in CPU memory."""
        if stage is not None and stage.used and self.refiner_offload:
            stage.model.to("cpu")
            self.loaded.model.to(self.device)

    def model_hash(self) -> str | None:
        if self.loaded and self.loaded.hash is None:
            self.loaded.hash = self.hashes.short(self.loaded.path)
        return self.loaded.hash if self.loaded else None

    # --- jobs -------------------------------------------------------------------------

    def exclusive(self):
        """The job lock, for callers that must not run beside a job (switching models)."""
        return self._lock

    def interrupt(self) -> None:
        self.flags.interrupted = True

    def skip(self) -> None:
        self.flags.skipped = True

    def _check_stop(self) -> None:
        """Ends the running batch (raises _Stop) once interrupt or skip was asked for: called
        at every sampling step and between groups of prompt chunks being encoded."""
        if self.flags.interrupted or self.flags.skipped:
            raise _Stop

    def txt2img(
        self,
        params: GenerationParams,
        progress: Callable[[Progress], None] | None = None,
        save: bool = True,
        allow_paths: bool = False,
    ) -> list[GeneratedImage]:
        def make(loaded, conditioner, seeds, subseeds, on_step, refiner=None):
            if params.enable_hr:
                return hires_fix(loaded.model, conditioner, params, seeds, on_step, subseeds, self.upscale_pixels, refiner)
            return to_pil(txt2img(loaded.model, conditioner, params, seeds, on_step, subseeds, refiner))

        return self._run(params, make, "txt2img", hires_fields(params), progress, save, allow_paths, refiner=True)

    def img2img(
        self,
        params: GenerationParams,
        image,
        mask=None,
        progress: Callable[[Progress], None] | None = None,
        save: bool = True,
        allow_paths: bool = False,
    ) -> list[GeneratedImage]:
        """img2img, or inpainting when a mask is given (white = repaint)."""
        image = open_image(image, "image")
        mask = open_image(mask, "mask") if mask is not None else None
        state = {}

        def make(loaded, conditioner, seeds, subseeds, on_step, refiner=None):
            if "prepared" not in state:
                state["prepared"] = prepare_input(loaded.model, params, image, mask)
            return img2img(loaded.model, conditioner, params, state["prepared"], seeds, on_step, subseeds, refiner)

        fields = {"Denoising strength": params.denoising_strength}
        if mask is not None:
            fields.update(inpaint_fields(params))
        results = self._run(params, make, "img2img", fields, progress, save, allow_paths, refiner=True)
        for result in results:
            result.notes[:0] = state["prepared"].notes if "prepared" in state else []
        return results

    def sd_upscale(
        self,
        params: GenerationParams,
        image,
        upscaler: str = "Lanczos",
        scale: float = 2.0,
        overlap: int = 64,
        progress: Callable[[Progress], None] | None = None,
        save: bool = True,
    ) -> list[GeneratedImage]:
        """Upscale, then redraw in overlapping img2img tiles of params.width pixels."""
        from core.pipelines.sd_upscale import sd_upscale

        image = flatten(open_image(image, "image"))
        if params.refiner_checkpoint and params.refiner_checkpoint != "None":
            raise EngineError("SD upscale takes no refiner (txt2img and img2img do)", "refiner_checkpoint")
        if not 1 <= scale <= 8:
            raise EngineError(f"must be between 1 and 8, got {scale}", "scale")
        # The enlarged picture is held whole (then redrawn in tiles): the same limit as width/height.
        large = (round(image.width * scale), round(image.height * scale))
        if max(large) > MAX_SIZE:
            raise EngineError(f"{image.width}x{image.height} times {scale} is {large[0]}x{large[1]}, "
                              f"over the limit of {MAX_SIZE}x{MAX_SIZE}", "scale", TOO_LARGE)

        def make(loaded, conditioner, seeds, subseeds, on_step):
            return [sd_upscale(loaded.model, conditioner, params, image, seed, self.upscale_pixels, upscaler, scale, overlap, on_step)
                    for seed in seeds]

        fields = {"Denoising strength": params.denoising_strength, "SD upscale overlap": overlap, "SD upscale upscaler": upscaler}
        return self._run(params, make, "img2img", fields, progress, save, False)

    def extras(self, image, job, progress: Callable[[int, int], None] | None = None,
               source_infotext: str | None = None):
        """One picture through an upscale job (core.upscaling.extras.ExtrasJob) on this engine's
        device, with its upscaler model cache (a second job with the same model does not load it
        again). ``progress(done, total)`` hears every tile and may raise to stop the job."""
        from core.upscaling.extras import run_extras

        return run_extras(image, job, models_root=self.models_dir, device=self.device, dtype=self.upscaler_dtype,
                          cache=self.upscaler_cache, progress=progress, source_infotext=source_infotext)

    def upscale_pixels(self, image, upscaler: str, size: tuple[int, int]):
        """Pixel upscaling for hires fix and SD upscale, by resampler or upscaler model."""
        from core.upscaling import upscale_image

        return upscale_image(image, upscaler, size=size, models_root=self.models_dir, device=str(self.device),
                             dtype=self.upscaler_dtype, cache=self.upscaler_cache)

    def _run(self, params, make_images, kind: str, fields: dict, progress, save: bool, allow_paths: bool,
             refiner: bool = False) -> list[GeneratedImage]:
        """The batch loop every job shares: lock, model, extension hooks, seeds, cancel flags,
        infotext, saving. ``refiner``: the job takes params.refiner_checkpoint (make_images gets
        a ``refiner=`` Refiner then)."""
        params.validate()
        # Extra-network tags the user must fix (a LoRA weight out of range) fail the job before
        # it waits for the device or loads anything.
        self.extensions.check_extra_networks(extract_extra_networks(params.prompt)[1])
        params = normalise_sampler(params)
        wants_refiner = bool(params.refiner_checkpoint) and params.refiner_checkpoint != "None"
        if wants_refiner and not refiner:
            raise EngineError(f"{kind} jobs take no refiner", "refiner_checkpoint", UNAVAILABLE)
        with self._lock:
            self.flags = JobFlags()
            loaded = self.job_model(params.checkpoint, allow_paths)
            if loaded.model.spec.family_info.flow is not None and params.tiling:
                # Seamless tiling wraps convolutions around; a transformer attends over the whole
                # picture with fixed positions, so there is nothing to wrap (only the VAE would).
                raise EngineError(f"seamless tiling works with UNet checkpoints, not {loaded.model.spec.label}", "tiling",
                                  UNAVAILABLE)
            if loaded.model.spec.family_info.flow is not None and params.scheduler in ("", AUTOMATIC_SCHEDULE):
                # What "Automatic" is on a flow model, written down as Forge writes it.
                params = dataclasses.replace(params, scheduler=FLOW_AUTOMATIC)
            stage = self._refiner_stage(params, allow_paths) if refiner else None
            if loaded.model.spec.zero_terminal_snr:
                fields = {**fields, "Noise Schedule": "Zero Terminal SNR"}  # A1111's sd_noise_schedule
            fields = {**fields, **flow_fields(loaded.model.spec, params)}
            fields = {**fields, **self._vae_fields(loaded)}
            job = Job(engine=self, params=params, kind=kind, model=loaded.model, started=time.time())
            results: list[GeneratedImage] = []
            try:
                _, tags = extract_extra_networks(params.prompt)
                fields = {**fields, **self.extensions.run_extra_networks(job, tags)}
                self.extensions.run("before_sampling", job)
                params = job.params
                first_seed = resolve_seed(params.seed)
                first_subseed = resolve_seed(params.subseed) if params.subseed_strength > 0 else None
                encoded = self.encoded_prompts.entries_for(loaded.model, loaded.embeddings, params.clip_skip, params.emphasis,
                                                           tags)
                conditioner = make_conditioner(loaded.model, self.tokenizer, loaded.embeddings, params.clip_skip, params.emphasis,
                                               self._check_stop, cache=encoded)
                model_hash = self.model_hash()
                out_dir = self.output_dir / f"{kind}-images" / dt.date.today().isoformat()
                started = time.monotonic()
                for batch in range(params.batch_count):
                    offsets = [batch * params.batch_size + i for i in range(params.batch_size)]
                    seeds = [first_seed + o for o in offsets]
                    subseeds = [first_subseed + o for o in offsets] if first_subseed is not None else None
                    self.flags.skipped = False

                    so_far: dict = {}  # the last step's denoised estimate, for the picture an interrupt keeps

                    def on_step(step, sigma, x, denoised, batch=batch):
                        self._check_stop()
                        so_far.update(latent=denoised, step=step + 1)
                        if progress:
                            progress(Progress(step + 1, params.steps, batch, params.batch_count, started, denoised,
                                              loaded.model.spec.latent_format))

                    try:
                        with seamless_tiling(job_models(loaded, stage), params.tiling):
                            if stage is None:
                                images = make_images(loaded, conditioner, seeds, subseeds, on_step)
                            else:
                                stage.used = False
                                images = make_images(loaded, conditioner, seeds, subseeds, on_step, refiner=stage)
                    except _Stop:
                        if self.flags.interrupted:
                            results.extend(self._interrupted_pictures(loaded, params, (seeds, subseeds), so_far, fields, job,
                                                                    model_hash))
                            break
                        continue
                    finally:
                        self._models_home(stage)
                    refined = {}
                    if stage is not None and stage.used:  # A1111 writes them once the refiner has run
                        refined = {"Refiner": self.refiner_title(), "Refiner switch at": stage.switch_at}
                    for index, (seed, image) in enumerate(zip(seeds, images)):
                        extra = {**generation_fields(params, subseeds[index] if subseeds else None), **fields,
                                 **job.infotext_fields, **refined}
                        infotext = create_infotext(params, seed, loaded.name, model_hash, batch_index=index, extra=extra)
                        path, save_error = (save_image_or_say_why(image, out_dir, seed, infotext) if save
                                            else (None, None))
                        result = GeneratedImage(image=image, seed=seed, infotext=infotext, path=path, notes=list(job.notes),
                                                save_error=save_error)
                        results.append(result)
                        self.extensions.run("after_image_saved", job, result)
            except BaseException as exc:
                job.error = exc  # after_job still runs: an extension must not think the job is going on
                raise
            finally:
                self.extensions.run("after_job", job, results)
            return results

    @staticmethod
    def _interrupted_pictures(loaded, params: GenerationParams, batch_seeds: tuple[list[int], list[int] | None],
                              so_far: dict, fields: dict, job: Job, model_hash: str | None) -> list[GeneratedImage]:
        """The pictures an interrupted batch had reached: its last denoised estimate decoded, as
        A1111 shows them. Not saved (A1111 saves them only with save_incomplete_images, off by
        default) and not handed to after_image_saved; none when no step had finished."""
        if so_far.get("latent") is None:
            return []
        from core.pipelines.common import decode_latents

        seeds, subseeds = batch_seeds
        images = to_pil(decode_latents(loaded.model.vae, so_far["latent"]))
        note = f"Interrupted at step {so_far['step']} of {params.steps}: the picture so far is shown, not saved"
        pictures = []
        for index, (seed, image) in enumerate(zip(seeds, images)):
            extra = {**generation_fields(params, subseeds[index] if subseeds else None), **fields, **job.infotext_fields}
            infotext = create_infotext(params, seed, loaded.name, model_hash, batch_index=index, extra=extra)
            pictures.append(GeneratedImage(image=image, seed=seed, infotext=infotext, notes=[*job.notes, note],
                                           incomplete=True))
        return pictures


def job_models(loaded: LoadedModel, stage: Refiner | None) -> list:
    """The models a batch samples and decodes with: the job's checkpoint and its refiner, if any."""
    return [loaded.model] if stage is None else [loaded.model, stage.model]


def save_image_or_say_why(image, out_dir: Path, seed: int, infotext: str) -> tuple[Path | None, str | None]:
    """(path, None) once saved; (None, why) when the folder cannot take it (full, read-only, a
    file where a folder should be): the job goes on and hands the picture back from memory, so
    minutes of sampling are not lost to a disk problem."""
    try:
        return save_png(image, out_dir, seed, infotext), None
    except OSError as exc:
        why = f"not saved in {out_dir}: {exc.strerror or exc}"
        log.error("image of seed %s %s", seed, why)
        return None, why


def check_prediction(value: str) -> str:
    if value in (None, ""):
        return "auto"
    if value not in PREDICTIONS:
        raise EngineError(f"must be auto, eps or v, got {value!r}", "prediction")
    return value


def _model_name(path: Path) -> str:
    return path.stem if path.is_file() else path.name


# A1111's checkpoint title: "name [0123456789]" (the short sha256).
_TITLE_HASH = re.compile(r"(.+?) \[[0-9a-fA-F]{8,64}\]")


def normalise_sampler(params: GenerationParams) -> GenerationParams:
    """An old combined name ("DPM++ 2M Karras") becomes sampler + schedule type, as A1111 records it."""
    from core.sampling.samplers import resolve_sampler_name

    sampler, schedule = resolve_sampler_name(params.sampler)
    if params.scheduler in ("", "Automatic") and schedule != "Automatic":
        return dataclasses.replace(params, sampler=sampler, scheduler=schedule)
    return dataclasses.replace(params, sampler=sampler)


def flow_fields(spec, params: GenerationParams) -> dict:
    """SD 3.x / FLUX.1 infotext fields as Forge writes them: FLUX dev's "Distilled CFG Scale",
    and "Module 1", "Module 2", ... naming the separate files (VAE, text encoders) the
    checkpoint was completed from, by file name without suffix."""
    flow = spec.family_info.flow
    if flow is None:
        return {}
    fields = {}
    if flow.distilled_guidance:
        fields["Distilled CFG Scale"] = format_number(params.distilled_cfg_scale)
    order = {"vae16": 0, "clip_l": 1, "clip_g": 2, "t5xxl": 3}
    for number, (_, file) in enumerate(sorted(spec.part_files, key=lambda part: order.get(part[0], 9)), start=1):
        fields[f"Module {number}"] = Path(file).stem
    return fields


def inpaint_fields(params: GenerationParams) -> dict:
    fields: dict = {"Mask blur": params.mask_blur}
    if params.inpainting_mask_invert:
        fields["Mask mode"] = "Inpaint not masked"
    fields["Masked content"] = FILL_MODES[params.inpainting_fill]
    if params.inpaint_full_res:
        fields["Inpaint area"] = "Only masked"
        fields["Masked area padding"] = params.inpaint_full_res_padding
    if params.inpainting_mask_weight != 1.0:
        fields["Conditional mask weight"] = params.inpainting_mask_weight
    return fields


def generation_fields(params: GenerationParams, subseed: int | None) -> dict:
    """Infotext fields beyond the basic ones, written only when they differ from the default,
    in A1111's spelling."""
    fields: dict = {}
    if params.scheduler and params.scheduler != "Automatic":
        fields["Schedule type"] = params.scheduler
    if subseed is not None:
        fields["Variation seed"] = subseed
        fields["Variation seed strength"] = params.subseed_strength
    if params.seed_resize_from_w > 0 and params.seed_resize_from_h > 0:
        fields["Seed resize from"] = f"{params.seed_resize_from_w}x{params.seed_resize_from_h}"
    if params.eta is not None:
        fields["Eta"] = params.eta
    if params.s_noise is not None:
        fields["S noise"] = params.s_noise
    if params.emphasis != "Original":
        fields["Emphasis"] = params.emphasis
    if params.tiling:
        fields["Tiling"] = True  # A1111 writes the field only when on
    return fields
