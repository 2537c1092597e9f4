"""What the page does, apart from how it is laid out: every callback of app/webui.py lives here
as a method of :class:`StudioUI`, taking and returning plain values, so it can be tested
without a browser.

No tensor work happens here: the engine (core) makes, upscales and saves images; this module
builds GenerationParams from the form, runs jobs in a thread while streaming progress and
previews, saves in the format the settings ask for, and moves files for the gallery.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import html
import logging
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import gradio as gr
from PIL import Image

from app import gallery as gallery_files
from app.imagefiles import IMAGE_SUFFIXES, expand_pattern, inside_folders, read_metadata, save_image
from app.preview import latent_preview
from app.settings import (ROOT, DEFAULT_DIR_PATTERN, DEFAULT_FOLDERS, DEFAULT_NAME_PATTERN, OPTION_BY_KEY, Settings,
                          SettingsError, default_allowed_dirs, default_settings_file, engine_overrides)
from app.styles import StyleDatabase, StyleError
from core.errors import EngineError

log = logging.getLogger(__name__)

TABS = ("txt2img", "img2img", "inpaint")
TAB_FOLDER = {"txt2img": "txt2img", "img2img": "img2img", "inpaint": "img2img", "extras": "extras"}
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
FILL_MODES = ("fill", "original", "latent noise", "latent nothing")
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
INPAINT_AREAS = ("Whole picture", "Only masked")
OUTPAINT_DIRECTIONS = ("left", "right", "up", "down")
INPAINT_SOURCES = ("Paint the mask", "Upload a mask")
SAME = "Use same"
NO_REFINER = "None"

COMMON_FIELDS = (
    "prompt", "negative_prompt", "styles", "checkpoint", "sampler", "scheduler", "steps", "cfg_scale",
    "width", "height", "batch_count", "batch_size", "seed", "subseed", "subseed_strength", "clip_skip",
)
HIRES_FIELDS = (
    "enable_hr", "hr_upscaler", "hr_second_pass_steps", "hr_denoising_strength", "hr_scale", "hr_resize_x",
    "hr_resize_y", "hr_sampler_name", "hr_scheduler", "hr_prompt", "hr_negative_prompt",
)
REFINER_FIELDS = ("refiner_checkpoint", "refiner_switch_at")
FORM_FIELDS = {
    "txt2img": COMMON_FIELDS + HIRES_FIELDS + REFINER_FIELDS,
    "img2img": COMMON_FIELDS + ("init_image", "resize_mode", "denoising_strength") + REFINER_FIELDS,
    "inpaint": COMMON_FIELDS + (
        "inpaint_source", "editor", "inpaint_image", "inpaint_mask", "resize_mode", "denoising_strength",
        "mask_blur", "mask_mode", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
        "outpaint_directions", "outpaint_pixels",
    ) + REFINER_FIELDS,
}
FORM_DEFAULTS: dict[str, Any] = {
    "prompt": "", "negative_prompt": "", "styles": [], "checkpoint": None, "sampler": "Euler",
    "scheduler": "Automatic", "steps": 20, "cfg_scale": 7.0, "width": 512, "height": 512, "batch_count": 1,
    "batch_size": 1, "seed": -1, "subseed": -1, "subseed_strength": 0.0, "clip_skip": 1,
    "enable_hr": False, "hr_upscaler": "Latent", "hr_second_pass_steps": 0, "hr_denoising_strength": 0.7,
    "hr_scale": 2.0, "hr_resize_x": 0, "hr_resize_y": 0, "hr_sampler_name": SAME, "hr_scheduler": SAME,
    "hr_prompt": "", "hr_negative_prompt": "", "refiner_checkpoint": NO_REFINER, "refiner_switch_at": 0.8,
    "init_image": None, "resize_mode": RESIZE_MODES[0], "denoising_strength": 0.75,
    "inpaint_source": INPAINT_SOURCES[0], "editor": None, "inpaint_image": None, "inpaint_mask": None,
    "mask_blur": 4, "mask_mode": MASK_MODES[0], "inpainting_fill": "original", "inpaint_full_res": INPAINT_AREAS[0],
    "inpaint_full_res_padding": 32,
    "outpaint_directions": [], "outpaint_pixels": 128,
}

# A1111 infotext key -> form field, for "send to" (PNG Info, gallery, results).
INFOTEXT_TO_FIELD = {
    "Prompt": "prompt", "Negative prompt": "negative_prompt", "Steps": "steps", "Sampler": "sampler",
    "Schedule type": "scheduler", "CFG scale": "cfg_scale", "Seed": "seed", "Size-1": "width", "Size-2": "height",
    "Clip skip": "clip_skip", "Batch size": "batch_size", "Variation seed": "subseed",
    "Variation seed strength": "subseed_strength", "Denoising strength": "denoising_strength",
    "Hires upscale": "hr_scale", "Hires steps": "hr_second_pass_steps", "Hires upscaler": "hr_upscaler",
    "Hires resize-1": "hr_resize_x", "Hires resize-2": "hr_resize_y", "Hires sampler": "hr_sampler_name",
    "Hires schedule type": "hr_scheduler", "Hires prompt": "hr_prompt", "Hires negative prompt": "hr_negative_prompt",
    "Mask blur": "mask_blur", "Masked area padding": "inpaint_full_res_padding",
    "Refiner": "refiner_checkpoint", "Refiner switch at": "refiner_switch_at",
}
_INT_FIELDS = {"steps", "seed", "width", "height", "clip_skip", "batch_size", "subseed", "hr_second_pass_steps",
               "hr_resize_x", "hr_resize_y", "mask_blur", "inpaint_full_res_padding"}
_FLOAT_FIELDS = {"cfg_scale", "subseed_strength", "denoising_strength", "hr_scale", "refiner_switch_at"}


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    # torch's own class, when torch is loaded (no torch error can exist before): the page itself
    # does not import torch.
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def error_message(exc: BaseException, what: str = "Generation") -> str:
    """One line a person can act on, for any failure of a job."""
    if isinstance(exc, gr.Error):
        return exc.message
    if isinstance(exc, (EngineError, StyleError, SettingsError, gallery_files.GalleryError)):
        return str(exc)
    if _is_out_of_memory(exc):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"Out of memory: try a smaller size, a smaller batch size or a lower hires scale ({first[:200]})")
    return f"{what} failed: {type(exc).__name__}: {exc}"


def sampler_choices() -> tuple[list[str], list[str]]:
    """Sampler names and schedule types, as the engine knows them."""
    from core.sampling.samplers import SAMPLERS
    from core.sampling.schedules import AUTOMATIC, SCHEDULES

    return list(SAMPLERS), [AUTOMATIC, *SCHEDULES]


def latent_upscale_modes() -> list[str]:
    from core.pipelines.hires import LATENT_UPSCALE_MODES

    return list(LATENT_UPSCALE_MODES)


def _default_params_cls() -> type:
    from core.params import GenerationParams

    return GenerationParams


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "…"
    seconds = max(0, int(round(seconds)))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes:02d}:{seconds:02d}"


def progress_html(progress: Any | None, started: float | None = None, text: str | None = None) -> str:
    """The bar above the results: fraction, step, batch, ETA."""
    if progress is None and text is None:
        return ""
    if progress is None:
        return f'<div class="studio-progress"><div class="studio-progress-text">{html.escape(text or "")}</div></div>'
    fraction = float(getattr(progress, "fraction", 0.0))
    parts = [f"Step {progress.step}/{progress.steps}"]
    if getattr(progress, "batches", 1) > 1:
        parts.append(f"batch {progress.batch + 1}/{progress.batches}")
    parts.append(f"{fraction * 100:.0f}%")
    eta = getattr(progress, "eta_seconds", None)
    parts.append(f"ETA {format_eta(eta)}")
    label = " · ".join(parts)
    return (f'<div class="studio-progress" data-fraction="{fraction:.3f}">'
            f'<div class="studio-progress-bar" style="width:{fraction * 100:.1f}%"></div>'
            f'<div class="studio-progress-text">{html.escape(label)}</div></div>')


def loading_html(name: str, fraction: float) -> str:
    """The bar shown while a checkpoint loads: "Loading <name>… N%"."""
    fraction = min(1.0, max(0.0, float(fraction)))
    label = f"Loading {name}… {fraction * 100:.0f}%"
    return (f'<div class="studio-progress studio-loading" data-fraction="{fraction:.3f}">'
            f'<div class="studio-progress-bar" style="width:{fraction * 100:.1f}%"></div>'
            f'<div class="studio-progress-text">{html.escape(label)}</div></div>')


def log_html(lines: Sequence[str], error: str | None = None) -> str:
    out = []
    if error:
        out.append(f'<div class="studio-error">{html.escape(error)}</div>')
    out.extend(f'<div class="studio-note">{html.escape(line)}</div>' for line in lines if line)
    return "".join(out)


@dataclass
class JobResult:
    items: list[dict] = field(default_factory=list)  # {"path", "infotext", "seed", "image"} per image
    notes: list[str] = field(default_factory=list)
    interrupted: bool = False
    save_errors: list[str] = field(default_factory=list)  # one per image the folder could not take


@dataclass
class _Live:
    """What the job thread tells the page: the last progress and preview."""
    progress: Any = None
    preview: Image.Image | None = None
    version: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
PREVIEW_SUFFIXES = (".preview.png", ".png", ".jpg", ".jpeg", ".webp")


def _letter_card(name: str, size: int = 128) -> Image.Image:
    from PIL import ImageDraw

    card = Image.new("RGB", (size, size), (58, 64, 84))
    ImageDraw.Draw(card).text((size // 2 - 4, size // 2 - 6), (name[:1] or "?").upper(), fill=(230, 230, 240))
    return card


class StudioUI:
    """The page's behaviour. ``engine`` is a core.engine.Engine or anything with its methods."""

    def __init__(self, engine: Any, params_cls: Callable[..., Any] | None = None,
                 settings: Settings | None = None, styles: StyleDatabase | None = None,
                 served_roots: Sequence[str | Path] | None = None,
                 allowed_dirs: Sequence[str | Path] | None = None):
        """``served_roots``: the folders the server serves images from, fixed at its start
        (default: the engine's output folder); the page saves only inside them.
        ``allowed_dirs``: the folders super-resolution batches may read and write (default:
        the output folder and inputs/ beside launch.py)."""
        self.engine = engine
        self._params_cls = params_cls
        self.settings = settings if settings is not None else Settings(default_settings_file())
        self.styles = styles if styles is not None else StyleDatabase()
        self.served_roots = [Path(p) for p in served_roots] if served_roots else [self.engine_output_root()]
        self.allowed_dirs = ([Path(p) for p in allowed_dirs] if allowed_dirs
                             else default_allowed_dirs(self.engine_output_root()))
        self.apply_model_settings()

    @property
    def params_cls(self) -> Callable[..., Any]:
        if self._params_cls is None:
            self._params_cls = _default_params_cls()
        return self._params_cls

    # ------------------------------------------------------------------ folders and models

    def engine_output_root(self) -> Path:
        """The output folder launch.py was given (--outdir)."""
        return Path(getattr(self.engine, "output_dir", None) or ROOT / "outputs")

    def output_root(self) -> Path:
        """The "Output folder" setting when it lies inside the served folders, else --outdir's:
        a setting never widens what the server writes to or serves (folder_problems says why
        one is ignored)."""
        configured = self.settings["outdir"]
        if configured and inside_folders(configured, self.served_roots):
            return Path(configured).expanduser()
        return self.engine_output_root()

    def folder(self, tab: str) -> Path:
        """The folder of a tab's images (before the date sub-folder): the tab's folder setting
        inside the output folder, or its default name when the setting leads outside."""
        key = TAB_FOLDER.get(tab, tab)
        folder = self.output_root() / self.settings[f"outdir_{key}"]
        if inside_folders(folder, self.served_roots):
            return folder
        return self.output_root() / DEFAULT_FOLDERS[key]

    def folder_problems(self, values: dict[str, Any]) -> list[str]:
        """Why the folder settings in ``values`` (any of outdir, outdir_txt2img, ...; the others
        as saved) lead outside the folders this server saves to and serves; [] when none do."""
        def value(key: str) -> str:
            return str(values[key] if key in values else self.settings[key]).strip()

        roots = ", ".join(str(r) for r in self.served_roots)
        problems = []
        root = self.engine_output_root()
        if value("outdir"):
            configured = Path(value("outdir")).expanduser()
            if inside_folders(configured, self.served_roots):
                root = configured
            else:
                problems.append(f"Output folder {configured} is outside the folder this server saves to and serves "
                                f"({roots}); start launch.py with --outdir {configured} to save there")
        for key in DEFAULT_FOLDERS:
            folder = root / value(f"outdir_{key}")
            if value(f"outdir_{key}") and not inside_folders(folder, self.served_roots):
                problems.append(f"{key} folder {folder} is outside the output folder ({roots})")
        return problems

    def served_image(self, path: str | None) -> str | None:
        """``path`` when it is an image file inside the served folders, else None: what a page
        element may hand on as a picture (a hidden text box can be sent holding anything)."""
        if not path or Path(path).suffix.lower() not in IMAGE_SUFFIXES:
            return None
        if not inside_folders(path, self.served_roots) or not Path(path).is_file():
            return None
        return str(path)

    # ------------------------------------------------------------------ LoRA cards

    def lora_entries(self, query: str = "") -> list[tuple[str, Path | None]]:
        """(tag name, preview picture or None) for every LoRA file whose name contains ``query``
        (case-insensitive): the name is the path below the LoRA folder without its suffix."""
        from core.modelfiles import model_files  # linked files and folders followed

        folder = Path(getattr(self.engine, "lora_dir", None) or ROOT / "models" / "Lora")
        found = []
        for path in sorted(model_files(folder, LORA_SUFFIXES)):
            name = path.relative_to(folder).with_suffix("").as_posix()
            if query.strip().lower() not in name.lower():
                continue
            preview = next((path.with_name(path.stem + s) for s in PREVIEW_SUFFIXES if path.with_name(path.stem + s).is_file()), None)
            found.append((name, preview))
        return found

    def lora_cards(self, query: str = "") -> list[tuple[Any, str]]:
        """Gallery items: the preview picture, or a plain card with the name's first letter."""
        cards = []
        for name, preview in self.lora_entries(query):
            picture = str(preview) if preview else _letter_card(Path(name).name)
            cards.append((picture, name))
        return cards

    @staticmethod
    def insert_lora(prompt: str, name: str, weight: float = 1.0) -> str:
        """The prompt with ``<lora:name:weight>`` added at the end (once)."""
        tag = f"<lora:{name}:{weight:g}>"
        if f"<lora:{name}:" in (prompt or ""):
            return prompt
        return f"{(prompt or '').rstrip()} {tag}".strip()

    def folders(self) -> dict[str, Path]:
        return {name: self.folder(name) for name in ("txt2img", "img2img", "extras")}

    def engine_saves(self, tab: str) -> bool:
        """Whether the engine's own saving gives what the settings ask for (the default)."""
        s = self.settings
        engine_root = getattr(self.engine, "output_dir", None)
        if engine_root is None:
            return False
        key = TAB_FOLDER[tab]
        return (s["image_format"] == "png" and s["filename_pattern"] == DEFAULT_NAME_PATTERN
                and s["directory_pattern"] == DEFAULT_DIR_PATTERN and s[f"outdir_{key}"] == DEFAULT_FOLDERS[key]
                and Path(self.output_root()).resolve() == Path(engine_root).resolve())

    def checkpoints(self) -> list[str]:
        try:
            return list(self.engine.list_checkpoints())
        except Exception as exc:  # the page must come up even if the folder is odd
            log.warning("could not list checkpoints: %s", exc)
            return []

    def checkpoint_choices(self) -> list[tuple[str, str]]:
        """(label, name) pairs for a dropdown: the bundled demo model says what it is."""
        from core.demo import label

        return [(label(name), name) for name in self.checkpoints()]

    def refresh_checkpoints(self, current: str | None) -> Any:
        choices = self.checkpoint_choices()
        names = [name for _, name in choices]
        value = current if current in names else (names[0] if names else None)
        return gr.Dropdown(choices=choices, value=value)

    def refiner_choices(self) -> list[tuple[str, str]]:
        """The Refiner dropdown: "None" (no refiner), then every checkpoint."""
        return [(NO_REFINER, NO_REFINER), *self.checkpoint_choices()]

    def refresh_refiners(self, current: str | None) -> Any:
        choices = self.refiner_choices()
        return gr.Dropdown(choices=choices, value=current if current in [n for _, n in choices] else NO_REFINER)

    def native_size(self, checkpoint: str | None) -> int | None:
        """The checkpoint's own picture size (Engine.default_size: 512 SD 1.x, 768 SD 2.x v,
        1024 SDXL, or its metadata's), None when it cannot tell without loading it."""
        find = getattr(self.engine, "default_size", None)
        if find is None or not checkpoint:
            return None
        try:
            return find(checkpoint)
        except Exception as exc:  # an unreadable file: the size stays as it is
            log.warning("could not read the size of %s: %s", checkpoint, exc)
            return None

    def follow_checkpoint_size(self, checkpoint: str | None, page_set: list | None, *sizes: Any,
                               page_load: bool = False) -> list[Any]:
        """Width and height follow the checkpoint: ``sizes`` are each tab's (width, height) in
        turn; a tab whose size is still the one the page put there (``page_set``, the native
        size it last applied; None: the Settings defaults) gets the new checkpoint's native
        size, one the user changed is left alone. On page load the defaults from Settings win
        unless they are the stock 512x512. -> [new page_set, width, height, width, height, ...]."""
        native = self.native_size(checkpoint)
        defaults = self.page_defaults()
        default = [defaults["width"], defaults["height"]]
        if native is None or (page_load and default != [FORM_DEFAULTS["width"], FORM_DEFAULTS["height"]]):
            return [page_set, *[gr.skip() for _ in sizes]]
        before = list(page_set) if page_set else default
        out: list[Any] = [[native, native]]
        for width, height in zip(sizes[::2], sizes[1::2]):
            untouched = [_number(width), _number(height)] == before
            out += [native, native] if untouched else [gr.skip(), gr.skip()]
        return out

    def models_root(self) -> Path:
        ckpt_dir = getattr(self.engine, "ckpt_dir", None)
        return Path(ckpt_dir).parent if ckpt_dir else Path("models")

    def upscalers(self) -> list[str]:
        """Upscaler names from core.upscaling (built-in resamplers and model files)."""
        try:
            from core.upscaling import list_upscalers
        except ImportError as exc:
            log.warning("upscaling is not available: %s", exc)
            return []
        try:
            return [info.name for info in list_upscalers(self.models_root())]
        except Exception as exc:
            log.warning("could not list upscalers: %s", exc)
            return []

    def hires_upscalers(self) -> list[str]:
        return latent_upscale_modes() + [name for name in self.upscalers() if name != "None"]

    # ------------------------------------------------------------------ building parameters

    def form(self, tab: str, values: Sequence[Any] | dict[str, Any]) -> dict[str, Any]:
        """Positional values in FORM_FIELDS[tab] order (as Gradio passes them), or a partial
        dict, -> a complete form."""
        names = FORM_FIELDS[tab]
        if isinstance(values, dict):
            unknown = set(values) - set(names)
            if unknown:
                raise ValueError(f"unknown fields for {tab}: {sorted(unknown)}")
            given = values
        else:
            given = dict(zip(names, values))
        return {name: given.get(name, FORM_DEFAULTS[name]) for name in names}

    def make_params(self, tab: str, form: dict[str, Any]) -> Any:
        """GenerationParams from a form; the styles are applied to the prompts here, so the
        infotext records what the model was given (as A1111)."""
        def whole(name: str, default: int) -> int:
            value = form.get(name)
            if value is None or value == "":
                return default
            number = float(value)
            if not number.is_integer():
                raise gr.Error(f"{name}: must be a whole number, got {value}", print_exception=False)
            return int(number)

        try:
            prompt, negative = self.styles.apply(form.get("styles") or [], form.get("prompt") or "",
                                                 form.get("negative_prompt") or "")
        except StyleError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        kwargs: dict[str, Any] = dict(
            prompt=prompt,
            negative_prompt=negative,
            steps=whole("steps", 20),
            cfg_scale=float(form.get("cfg_scale") if form.get("cfg_scale") is not None else 7.0),
            seed=whole("seed", -1),
            width=whole("width", 512),
            height=whole("height", 512),
            sampler=form.get("sampler") or "Euler",
            scheduler=form.get("scheduler") or "Automatic",
            batch_size=whole("batch_size", 1),
            batch_count=whole("batch_count", 1),
            checkpoint=form.get("checkpoint") or None,
        )
        clip_skip = whole("clip_skip", 1)
        if clip_skip != 1:
            kwargs["clip_skip"] = clip_skip
        strength = float(form.get("subseed_strength") or 0.0)
        if strength > 0:
            kwargs["subseed"] = whole("subseed", -1)
            kwargs["subseed_strength"] = strength
        if tab == "txt2img" and form.get("enable_hr"):
            kwargs.update(
                enable_hr=True,
                hr_upscaler=form.get("hr_upscaler") or "Latent",
                hr_second_pass_steps=whole("hr_second_pass_steps", 0),
                denoising_strength=float(form.get("hr_denoising_strength") if form.get("hr_denoising_strength")
                                         is not None else 0.7),
                hr_scale=float(form.get("hr_scale") or 2.0),
                hr_resize_x=whole("hr_resize_x", 0),
                hr_resize_y=whole("hr_resize_y", 0),
                hr_sampler_name="" if form.get("hr_sampler_name") in (None, "", SAME) else form["hr_sampler_name"],
                hr_scheduler="" if form.get("hr_scheduler") in (None, "", SAME) else form["hr_scheduler"],
                hr_prompt=form.get("hr_prompt") or "",
                hr_negative_prompt=form.get("hr_negative_prompt") or "",
            )
        if form.get("refiner_checkpoint") not in (None, "", NO_REFINER):
            switch_at = form.get("refiner_switch_at")
            kwargs.update(refiner_checkpoint=form["refiner_checkpoint"],
                          refiner_switch_at=float(switch_at) if switch_at is not None else 0.8)
        if tab in ("img2img", "inpaint"):
            kwargs["denoising_strength"] = float(form.get("denoising_strength") if form.get("denoising_strength")
                                                 is not None else 0.75)
            kwargs["resize_mode"] = _index(form.get("resize_mode"), RESIZE_MODES)
        if tab == "inpaint":
            kwargs.update(
                mask_blur=whole("mask_blur", 4),
                inpainting_mask_invert=_index(form.get("mask_mode"), MASK_MODES),
                inpainting_fill=_index(form.get("inpainting_fill"), FILL_MODES),
                inpaint_full_res=bool(_index(form.get("inpaint_full_res"), INPAINT_AREAS)),
                inpaint_full_res_padding=whole("inpaint_full_res_padding", 32),
            )
        return self.params_cls(**kwargs)

    def inputs_for(self, tab: str, form: dict[str, Any], params: Any) -> tuple[Any, Any, list[str]]:
        """(image, mask, notes) for an img2img/inpaint job; raises gr.Error when missing."""
        notes: list[str] = []
        if tab == "img2img":
            image = form.get("init_image")
            if image is None:
                raise gr.Error("img2img: upload an input image first", print_exception=False)
            return _open_upload(image, "input image"), None, notes
        if form.get("inpaint_source") == INPAINT_SOURCES[1]:
            image, mask = form.get("inpaint_image"), form.get("inpaint_mask")
            if image is None:
                raise gr.Error("Inpaint: upload an image first", print_exception=False)
            if mask is None:
                raise gr.Error("Inpaint: upload a mask (white = repaint) or paint one", print_exception=False)
            image, mask = _open_upload(image, "image"), _open_upload(mask, "mask")
        else:
            image, mask = editor_image_and_mask(form.get("editor"))
        directions = [d for d in (form.get("outpaint_directions") or []) if d]
        if directions:
            from core.pipelines.masking import outpaint_canvas

            pixels = int(float(form.get("outpaint_pixels") or 0))
            left = -(-pixels // 8) * 8 if "left" in directions else 0
            up = -(-pixels // 8) * 8 if "up" in directions else 0
            canvas = outpaint_canvas(image.convert("RGB"), pixels, tuple(directions))
            grown = canvas.mask
            if mask is not None and mask.getbbox() is not None:  # keep what was painted, moved with the image
                painted = Image.new("L", grown.size, 0)
                painted.paste(mask.convert("L").resize(image.size), (left, up))
                from PIL import ImageChops

                grown = ImageChops.lighter(grown, painted)
            image, mask = canvas.image, grown
            width, height = max(64, round(image.width / 8) * 8), max(64, round(image.height / 8) * 8)
            params.width, params.height = width, height
            notes.append(f"outpainting {', '.join(directions)} by {pixels}px: working size {width}x{height}")
        elif mask is None:
            raise gr.Error("Inpaint: paint over the part of the image to repaint, or upload a mask",
                           print_exception=False)
        return image, mask, notes

    # ------------------------------------------------------------------ running jobs

    def run_job(self, tab: str, form: dict[str, Any], progress: Callable[[Any], None] | None = None) -> JobResult:
        """Run one txt2img/img2img/inpaint job to the end; raises on failure."""
        params = self.make_params(tab, form)
        engine_saves = self.engine_saves(tab)
        if tab == "txt2img":
            results = self.engine.txt2img(params, progress=progress, save=engine_saves)
            notes: list[str] = []
        else:
            image, mask, notes = self.inputs_for(tab, form, params)
            results = self.engine.img2img(params, image, mask, progress=progress, save=engine_saves)
        job = JobResult(notes=list(notes))
        flags = getattr(self.engine, "flags", None)
        job.interrupted = bool(getattr(flags, "interrupted", False))
        for result in results:
            path = getattr(result, "path", None)
            save_error = getattr(result, "save_error", None)
            if save_error is not None:
                job.save_errors.append(save_error)
            elif path is None or not engine_saves:
                path = self._save_or_say_why(lambda: self.save(tab, result.image, result.infotext, params, result.seed),
                                             self.folder(tab), job.save_errors)
            # "image": the picture itself when no file holds it, so the page can still show it
            job.items.append({"path": str(path) if path is not None else None, "infotext": result.infotext,
                              "seed": result.seed, "image": result.image if path is None else None})
            for note in getattr(result, "notes", None) or []:
                if note not in job.notes:
                    job.notes.append(note)
        expected = params.batch_count * params.batch_size
        if job.interrupted:
            job.notes.append(f"Interrupted: {len(job.items)} of {expected} images made")
        elif len(job.items) < expected:
            job.notes.append(f"Skipped: {len(job.items)} of {expected} images made")
        return job

    def save(self, tab: str, image: Image.Image, infotext: str | None, params: Any = None,
             seed: int | None = None, chunks: dict[str, str] | None = None) -> Path:
        """Save where and how the settings say (used when the engine's layout is not wanted)."""
        s = self.settings
        fields = {
            "seed": seed if seed is not None else "",
            "prompt": getattr(params, "prompt", "") if params is not None else "",
            "model_name": Path(str(getattr(params, "checkpoint", "") or "")).stem if params is not None else "",
            "sampler": getattr(params, "sampler", "") if params is not None else "",
            "scheduler": getattr(params, "scheduler", "") if params is not None else "",
            "steps": getattr(params, "steps", "") if params is not None else "",
            "cfg": getattr(params, "cfg_scale", "") if params is not None else "",
            "width": image.width, "height": image.height,
        }
        directory = self.folder(tab)
        sub = expand_pattern(s["directory_pattern"], fields).strip("/ ")
        if sub:
            directory = directory / sub
        name = expand_pattern(s["filename_pattern"], fields).strip(" -_")
        return save_image(image, directory, name=name, fmt=s["image_format"], infotext=infotext,
                          chunks=chunks, quality=s["jpeg_quality"])

    def stream(self, tab: str, values: Sequence[Any] | dict[str, Any]) -> Iterator[tuple]:
        """Run a job in a thread and yield (gallery, info, log, progress, results) while it
        runs: progress every poll, a preview image when one is due, the results at the end.
        Errors end as a message in the log and a Gradio error toast; the page stays usable."""
        form = self.form(tab, values)
        live = _Live()
        every = int(self.settings["preview_every"])
        started = time.monotonic()

        def on_progress(p: Any) -> None:
            preview = None
            step = getattr(p, "step", 0)
            if every > 0 and (step % every == 0 or step == getattr(p, "steps", -1)):
                try:
                    preview = latent_preview(getattr(p, "latent", None), p.latent_format)
                except Exception:  # a preview never breaks a job
                    log.debug("preview failed", exc_info=True)
            with live.lock:
                live.progress = p
                if preview is not None:
                    live.preview = preview
                live.version += 1

        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["result"] = self.run_job(tab, form, on_progress)
            except BaseException as exc:  # reported to the page below
                outcome["error"] = exc

        thread = threading.Thread(target=work, name=f"studio-{tab}", daemon=True)
        skip = gr.skip()
        yield (skip, skip, "", progress_html(None, text="Starting…"), skip)
        thread.start()
        seen_version, shown_preview, shown_loading = 0, None, ""
        try:
            while thread.is_alive():
                thread.join(0.25)
                with live.lock:
                    version, progress, preview = live.version, live.progress, live.preview
                if version != seen_version:
                    seen_version = version
                    gallery_value = skip
                    if preview is not None and preview is not shown_preview:
                        shown_preview = preview
                        gallery_value = [(preview, "preview")]
                    yield (gallery_value, skip, skip, progress_html(progress, started), skip)
                elif (loading := self.loading_bar()) != shown_loading:  # the job waits for a checkpoint
                    shown_loading = loading
                    if loading:
                        yield (skip, skip, skip, loading, skip)
        except GeneratorExit:  # the page went away or the event was cancelled: stop the job too
            self.interrupt()
            raise
        if "error" in outcome:
            exc = outcome["error"]
            message = error_message(exc)
            if not isinstance(exc, (EngineError, gr.Error)):
                log.error("job failed:\n%s", "".join(traceback.format_exception(exc)))
            yield ([] if shown_preview is not None else skip, skip, log_html([], message), "", skip)
            raise gr.Error(message, print_exception=False)
        job: JobResult = outcome["result"]
        elapsed = time.monotonic() - started
        notes = list(job.notes)
        saved = [item["path"] for item in job.items if item["path"] is not None]
        if job.items:
            notes.append(f"{len(job.items)} image{'s' if len(job.items) != 1 else ''} in {elapsed:.1f}s"
                         + (f", saved to {Path(saved[0]).parent}" if saved else ""))
        if job.save_errors:
            warning = (f"{len(job.save_errors)} of {len(job.items)} image(s) {job.save_errors[0]}. They are only "
                       "on this page: download them before making more (free space or pick another output folder)")
            notes.append(warning)
            gr.Warning(warning)
        gallery_value = [(item["path"] or item["image"], None) for item in job.items]
        info = job.items[0]["infotext"] if job.items else ""
        yield (gallery_value, info, log_html(notes), "", job.items)

    # ------------------------------------------------------------------ loading checkpoints

    def loading_bar(self) -> str:
        """The loading bar while the engine loads a checkpoint (for whatever reason), else ""."""
        loading = getattr(self.engine, "loading", None)
        return loading_html(loading.name, loading.fraction) if loading is not None else ""

    def model_status(self) -> str:
        """The line under the checkpoint dropdown: the checkpoint loading (with its bar), the
        one loaded, or that none is yet."""
        bar = self.loading_bar()
        if bar:
            return bar
        loaded = getattr(self.engine, "loaded", None)
        if loaded is not None:
            return f'<div class="studio-note studio-model">Loaded: {html.escape(str(loaded.name))}</div>'
        return '<div class="studio-note studio-model">No checkpoint loaded yet: it loads on first use</div>'

    def current_checkpoint(self) -> str | None:
        """The dropdown's name of the checkpoint loading (or else loaded), None when none is or
        it is not in the list."""
        current = getattr(self.engine, "loading", None) or getattr(self.engine, "loaded", None)
        resolve = getattr(self.engine, "resolve_checkpoint", None)
        if current is None or resolve is None:
            return None
        for name in self.checkpoints():
            try:
                if Path(resolve(name)).resolve() == Path(current.path).resolve():
                    return name
            except Exception:  # noqa: BLE001 - a name that no longer resolves is not the loaded one
                continue
        return None

    def watch_model(self) -> Iterator[str]:
        """The model status, again and again while a checkpoint loads (the page opened during
        the load at start, say), then once more."""
        shown = None
        while True:
            status = self.model_status()
            if status != shown:
                shown = status
                yield status
            if getattr(self.engine, "loading", None) is None:
                return
            time.sleep(0.25)

    def load_checkpoint(self, name: str | None) -> Iterator[str]:
        """Load ``name`` now (the dropdown was changed), letting the previous model go, while
        yielding the status with the loading bar. Waits for a running job (the engine's job
        lock); a failure ends as the status and an error toast."""
        load = getattr(self.engine, "load", None)
        if not name or load is None:
            yield self.model_status()
            return
        outcome: dict[str, BaseException] = {}

        def work() -> None:
            lock = self.engine.exclusive() if hasattr(self.engine, "exclusive") else contextlib.nullcontext()
            try:
                with lock:
                    load(name)
            except BaseException as exc:  # reported below
                outcome["error"] = exc

        thread = threading.Thread(target=work, name="studio-load", daemon=True)
        thread.start()
        shown = None
        while thread.is_alive():
            thread.join(0.2)
            status = self.model_status()
            if status != shown:
                shown = status
                yield status
        if "error" in outcome:
            message = error_message(outcome["error"], f"Loading {name}")
            if not isinstance(outcome["error"], EngineError):
                log.error("loading %s failed:\n%s", name, "".join(traceback.format_exception(outcome["error"])))
            yield f'<div class="studio-error">{html.escape(message)}</div>'
            raise gr.Error(message, print_exception=False)
        yield self.model_status()

    def interrupt(self) -> None:
        try:
            self.engine.interrupt()
        except Exception:
            log.debug("interrupt failed", exc_info=True)

    def skip(self) -> None:
        try:
            self.engine.skip()
        except Exception:
            log.debug("skip failed", exc_info=True)

    # ------------------------------------------------------------------ results

    @staticmethod
    def selected_item(items: list[dict] | None, index: int | None) -> dict | None:
        if not items:
            return None
        index = index if isinstance(index, int) and 0 <= index < len(items) else 0
        return items[index]

    def select_result(self, items: list[dict] | None, index: int | None) -> str:
        item = self.selected_item(items, index)
        return item["infotext"] if item else ""

    def reuse_seed(self, items: list[dict] | None, index: int | None) -> Any:
        item = self.selected_item(items, index)
        return item["seed"] if item else gr.skip()

    # ------------------------------------------------------------------ infotext -> fields

    def fields_from_infotext(self, text: str | None, tab: str) -> tuple[dict[str, Any], list[str]]:
        """The form fields of ``tab`` an infotext gives values for, and notes on what it could
        not use. Only fields the text names are returned: the rest of the form is left as is."""
        from core.infotext import params_from_infotext, parse_infotext

        if not text or not text.strip():
            return {}, ["no generation parameters in this image"]
        parsed = parse_infotext(text)
        params, rest = params_from_infotext(text)
        names = set(FORM_FIELDS[tab])
        notes: list[str] = []
        out: dict[str, Any] = {}
        from core.infotext import FIELDS as KNOWN_FIELDS, param_attribute

        for key, value in parsed.items():
            name = INFOTEXT_TO_FIELD.get(key)
            if key in ("Denoising strength",) and tab == "txt2img":
                name = "hr_denoising_strength"
            if name is None or name not in names:
                continue
            attr = param_attribute(key)
            if key in rest and key in KNOWN_FIELDS:  # a field core reads, with a value it could not
                notes.append(f"{key}: {rest[key]!r} not understood")
                continue
            if attr is not None:
                converted = getattr(params, attr)
            elif key in params.extra:
                converted = params.extra[key]
            else:
                converted = value
            try:
                if name in _INT_FIELDS:
                    converted = int(float(converted))
                elif name in _FLOAT_FIELDS or name == "hr_denoising_strength":
                    converted = float(converted)
            except (TypeError, ValueError):
                notes.append(f"{key}: {value!r} not understood")
                continue
            out[name] = converted
        samplers, schedules = sampler_choices()
        if "sampler" in out:
            from core.sampling.samplers import resolve_sampler_name

            try:
                sampler, schedule = resolve_sampler_name(out["sampler"])
            except Exception:
                notes.append(f"Sampler: {out.pop('sampler')!r} is not one this studio has")
            else:
                out["sampler"] = sampler
                if schedule != "Automatic" and "scheduler" not in out:
                    out["scheduler"] = schedule
        if "scheduler" in out and out["scheduler"] not in schedules:
            notes.append(f"Schedule type: {out.pop('scheduler')!r} is not one this studio has")
        for key in ("hr_sampler_name", "hr_scheduler"):
            if key in out and out[key] not in (samplers if key == "hr_sampler_name" else schedules):
                notes.append(f"{key}: {out.pop(key)!r} unknown")
        if "hr_upscaler" in out and out["hr_upscaler"] not in self.hires_upscalers():
            notes.append(f"Hires upscaler: {out.pop('hr_upscaler')!r} is not available")
        if tab == "txt2img" and any(k in parsed for k in ("Hires upscale", "Hires resize-1", "Hires upscaler")):
            out["enable_hr"] = True
        if "Model" in parsed:
            match = self.match_checkpoint(parsed["Model"])
            if match:
                out["checkpoint"] = match
            else:
                notes.append(f"Model: {parsed['Model']!r} is not in the checkpoint folder")
        if "refiner_checkpoint" in out:
            title = parsed["Refiner"]
            match = self.match_checkpoint(re.sub(r" \[[0-9a-fA-F]{8,64}\]$", "", title))
            if match:
                out["refiner_checkpoint"] = match
            else:
                del out["refiner_checkpoint"]
                notes.append(f"Refiner: {title!r} is not in the checkpoint folder")
        if "subseed_strength" in out and out["subseed_strength"] <= 0:
            out.pop("subseed", None)
        if tab == "inpaint":
            out["mask_mode"] = parsed["Mask mode"] if parsed.get("Mask mode") in MASK_MODES else MASK_MODES[0]
            if parsed.get("Masked content") in FILL_MODES:
                out["inpainting_fill"] = parsed["Masked content"]
            out["inpaint_full_res"] = INPAINT_AREAS[1] if parsed.get("Inpaint area") == "Only masked" else INPAINT_AREAS[0]
        return out, notes

    def match_checkpoint(self, model: str) -> str | None:
        names = self.checkpoints()
        for name in names:
            if name == model or Path(name).stem == model or Path(name).name == model:
                return name
        lowered = model.lower()
        return next((n for n in names if Path(n).stem.lower() == lowered), None)

    def field_updates(self, tab: str, text: str | None, names: Sequence[str]) -> tuple[list[Any], list[str]]:
        """Values for components ``names`` (gr.skip() for fields the text does not give)."""
        fields, notes = self.fields_from_infotext(text, tab)
        return [fields[name] if name in fields else gr.skip() for name in names], notes

    # ------------------------------------------------------------------ PNG info

    def png_info(self, path: str | None) -> tuple[str, str, dict]:
        """(infotext, html of the other metadata, raw items) of an uploaded image file."""
        if not path:
            return "", "", {}
        try:
            meta = read_metadata(path)
        except FileNotFoundError:
            raise gr.Error("PNG Info: the file is gone, upload it again", print_exception=False) from None
        except Exception as exc:
            raise gr.Error(f"PNG Info: not a readable image ({type(exc).__name__}: {exc})",
                           print_exception=False) from None
        rows = [f"<p><b>{html.escape(str(meta.get('format') or 'image'))}</b> {html.escape(meta['size'])}"]
        if meta["source"]:
            rows.append(f" — parameters from the {html.escape(meta['source'])}")
        rows.append("</p>")
        if not meta["parameters"]:
            rows.append("<p>No generation parameters found in this image.</p>")
        for key, value in meta["items"].items():
            if not isinstance(value, str):
                import json

                value = json.dumps(value, indent=1, ensure_ascii=False)
            shown = value if len(value) <= 4000 else value[:4000] + "…"
            rows.append(f"<div class='studio-chunk'><b>{html.escape(str(key))}</b><pre>{html.escape(shown)}</pre></div>")
        return meta["parameters"] or "", "".join(rows), meta["items"]

    # ------------------------------------------------------------------ super-resolution

    def upscale(self, mode: str, image_path: str | None, input_dir: str, output_dir: str, upscaler: str,
                resize_mode: str, scale: float, width: float, height: float,
                progress: Callable[[float, str], None] | None = None,
                sd: dict[str, Any] | None = None) -> tuple[list, str, str, list[dict]]:
        """Upscale one image or every image of a folder; returns (gallery, info, log, items).

        ``sd`` (enabled): SD upscale instead — the engine enlarges with ``upscaler`` and redraws
        in img2img tiles of ``sd["tile"]`` pixels with the checkpoint; keys are form fields
        (prompt, negative_prompt, steps, cfg_scale, seed, sampler, denoising_strength) plus
        ``tile`` and ``overlap``."""
        try:
            from core.upscaling import open_image
            from core.upscaling.extras import ExtrasJob
        except ImportError as exc:
            raise gr.Error(f"Super-resolution is not available: {exc}", print_exception=False) from None
        if not upscaler:
            raise gr.Error("Super-resolution: choose an upscaler", print_exception=False)
        by_size = resize_mode == "Scale to"
        size = (int(width or 0), int(height or 0)) if by_size else None
        factor = None if by_size else float(scale or 0)
        job = ExtrasJob(upscaler=upscaler, scale=factor, size=size, tile=self.settings["ESRGAN_tile"],
                        overlap=self.settings["ESRGAN_tile_overlap"])
        if mode == "Batch from folder":
            self._check_allowed_dir(input_dir, "input folder")
            if output_dir:
                self._check_allowed_dir(output_dir, "output folder")
            if not input_dir or not Path(input_dir).expanduser().is_dir():
                raise gr.Error(f"Super-resolution: {input_dir!r} is not a folder", print_exception=False)
            sources = sorted(p for p in Path(input_dir).expanduser().iterdir()
                             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES + (".bmp", ".tif", ".tiff"))
            if not sources:
                raise gr.Error(f"Super-resolution: no images in {input_dir}", print_exception=False)
        else:
            if not image_path:
                raise gr.Error("Super-resolution: upload an image first", print_exception=False)
            sources = [Path(image_path)]
        out_dir = Path(output_dir).expanduser() if (mode == "Batch from folder" and output_dir) else None
        done: list[dict] = []
        notes: list[str] = []
        unsaved: list[str] = []  # why a picture could not be saved, one per such picture
        for number, source in enumerate(sources):
            if progress is not None:
                progress(number / len(sources), f"{source.name} ({number + 1}/{len(sources)})")
            try:
                picture = open_image(source)
                try:
                    original = read_metadata(source).get("parameters")
                except Exception:
                    original = None
                if sd and sd.get("enabled"):
                    result, text, saved = self._sd_upscale(picture, upscaler, factor, size, sd, progress,
                                                           number, len(sources), out_dir, source.stem, unsaved)
                    done.append({"path": str(saved) if saved else None, "infotext": text, "seed": None,
                                 "image": None if saved else result,
                                 "size": f"{picture.width}x{picture.height} → {result.width}x{result.height}"})
                    continue

                def on_tile(done: int, total: int, number=number, name=source.name) -> None:
                    if progress is not None:
                        progress((number + done / max(total, 1)) / len(sources),
                                 f"{name} ({number + 1}/{len(sources)}): tile {done}/{total}")

                upscaled = self.engine.extras(picture, job, progress=on_tile, source_infotext=original)
                result, text = upscaled.image, upscaled.infotext
                saved = self._save_or_say_why(
                    lambda: save_image(result, out_dir, name=source.stem, fmt=self.settings["image_format"],
                                       infotext=text, quality=self.settings["jpeg_quality"])
                    if out_dir is not None else self.save("extras", result, text),
                    out_dir or self.folder("extras"), unsaved)
            except Exception as exc:
                message = error_message(exc, "Upscaling")
                if len(sources) == 1:
                    raise gr.Error(message, print_exception=False) from None
                notes.append(f"{source.name}: {message}")
                continue
            # "image": the picture itself when no file holds it, so the page can still show it
            done.append({"path": str(saved) if saved else None, "infotext": text, "seed": None,
                         "image": None if saved else result,
                         "size": f"{picture.width}x{picture.height} → {result.width}x{result.height}"})
        saved_paths = [d["path"] for d in done if d["path"]]
        if done:
            notes.append(f"{len(done)} of {len(sources)} image(s) upscaled"
                         + (f", saved to {Path(saved_paths[0]).parent}" if saved_paths else ""))
        if unsaved:
            warning = (f"{len(unsaved)} of {len(done)} image(s) {unsaved[0]}. They are only on this page: "
                       "download them before making more (free space or pick another output folder)")
            notes.append(warning)
            gr.Warning(warning)
        gallery = [(d["path"] or d["image"], d["size"]) for d in done]
        return gallery, done[0]["infotext"] if done else "", log_html(notes), done

    @staticmethod
    def _save_or_say_why(save: Callable[[], Path], folder: Path, unsaved: list[str]) -> Path | None:
        """``save()``'s path; None after an OSError (a full or read-only folder), whose reason is
        added to ``unsaved``: the picture stays on the page instead of being lost."""
        try:
            return save()
        except OSError as exc:
            unsaved.append(f"not saved in {folder}: {exc.strerror or exc}")
            return None

    def _check_allowed_dir(self, folder: str | None, what: str) -> None:
        """A gr.Error naming ``folder`` and the allowed ones unless it lies inside one of them
        (the page may name any path; only those given to launch.py --allowed-dir are used)."""
        if not folder or inside_folders(folder, self.allowed_dirs):
            return
        allowed = ", ".join(str(d) for d in self.allowed_dirs)
        raise gr.Error(f"Super-resolution: the {what} {folder} is outside the allowed folders ({allowed}); "
                       f"start launch.py with --allowed-dir to add one", print_exception=False)

    def _sd_upscale(self, picture: Image.Image, upscaler: str, factor: float | None, size: tuple[int, int] | None,
                    sd: dict[str, Any], progress, number: int, total: int, out_dir: Path | None, stem: str,
                    unsaved: list[str]):
        if not hasattr(self.engine, "sd_upscale"):
            raise gr.Error("SD upscale is not available in this engine", print_exception=False)
        if factor is None:  # SD upscale takes a factor: the one that reaches the asked width (or height)
            factor = size[0] / picture.width if size[0] else size[1] / picture.height
        tile = int(float(sd.get("tile") or 512))
        form = self.form("img2img", {k: v for k, v in sd.items() if k in FORM_FIELDS["img2img"]})
        form.update(width=tile, height=tile, batch_count=1, batch_size=1)
        params = self.make_params("img2img", form)

        def on_step(p: Any) -> None:
            if progress is not None:
                progress((number + getattr(p, "fraction", 0.0)) / total,
                         f"SD upscale {number + 1}/{total}: step {p.step}/{p.steps}")

        saves = self.engine_saves("img2img") and out_dir is None
        results = self.engine.sd_upscale(params, picture, upscaler=upscaler, scale=float(factor),
                                         overlap=int(float(sd.get("overlap") or 64)), progress=on_step, save=saves)
        if not results:
            raise gr.Error("SD upscale was interrupted", print_exception=False)
        result = results[0]
        if saves and getattr(result, "save_error", None):
            unsaved.append(result.save_error)
            saved = None
        elif saves and result.path is not None:
            saved = result.path
        else:
            saved = self._save_or_say_why(
                lambda: save_image(result.image, out_dir, name=stem, fmt=self.settings["image_format"],
                                   infotext=result.infotext, quality=self.settings["jpeg_quality"])
                if out_dir is not None else self.save("img2img", result.image, result.infotext, params, result.seed),
                out_dir or self.folder("img2img"), unsaved)
        return result.image, result.infotext, saved

    # ------------------------------------------------------------------ gallery

    def gallery(self, tab: str | None, date: str | None) -> tuple[list, list[str], list[str], str]:
        """(gallery items, date choices, listed paths, note) for the Gallery tab."""
        root = self.output_root()
        everything = gallery_files.list_images(self.folders(), tab, None, exclude=root / gallery_files.TRASH)
        entries = [e for e in everything if date in (None, "", "All") or e.date == date]
        note = ""
        if len(entries) > gallery_files.MAX_LISTED:
            note = f"showing the newest {gallery_files.MAX_LISTED} of {len(entries)} images"
            entries = entries[:gallery_files.MAX_LISTED]
        items = [(str(e.path), f"{e.tab} · {e.path.name}") for e in entries]
        return items, ["All", *gallery_files.dates(everything)], [str(e.path) for e in entries], note

    def gallery_select(self, paths: list[str] | None, index: int | None) -> tuple[str, str, str]:
        """(infotext, html link to the full-size file, path) of the picked image."""
        if not paths or index is None or not 0 <= index < len(paths):
            return "", "", ""
        path = paths[index]
        try:
            text = read_metadata(path).get("parameters") or ""
        except Exception as exc:
            text = f"(cannot read: {exc})"
        link = (f'<a class="studio-open" href="/gradio_api/file={html.escape(path)}" target="_blank" '
                f'rel="noopener">Open full size</a> <code>{html.escape(path)}</code>')
        return text, link, path

    def gallery_delete(self, path: str | None) -> str:
        if not path:
            raise gr.Error("Gallery: pick an image first", print_exception=False)
        root = self.output_root()
        try:
            moved = gallery_files.delete_to_trash(root, path, list(self.folders().values()))
        except gallery_files.GalleryError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return f"Moved to the trash: {moved}"

    def trash(self) -> tuple[list, list[str]]:
        entries = gallery_files.list_trash(self.output_root())
        return [(str(e.path), e.path.name) for e in entries], [str(e.path) for e in entries]

    def restore(self, path: str | None) -> str:
        if not path:
            raise gr.Error("Trash: pick an image to restore", print_exception=False)
        try:
            back = gallery_files.restore(self.output_root(), path)
        except gallery_files.GalleryError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return f"Restored: {back}"

    # ------------------------------------------------------------------ settings and styles

    def settings_form(self, keys: Sequence[str]) -> dict[str, Any]:
        """The saved values of the Settings tab's ``keys``: what the tab shows when the page is
        (re)loaded or applied, and what ``apply_settings`` later tells edits from."""
        values = self.settings.values()
        return {key: values[key] for key in keys}

    def apply_settings(self, keys: Sequence[str], values: Sequence[Any], shown: dict[str, Any] | None = None) -> str:
        """Save the Settings tab's ``values``. With ``shown`` (the values the tab was loaded with),
        only the ones the user edited are written: a value changed meanwhile by the API or
        another page is not put back by a page that merely showed the old one."""
        edited = dict(zip(keys, values))
        if shown is not None:
            edited = {k: v for k, v in edited.items() if not _same_setting(k, v, shown.get(k))}
        problems = self.folder_problems({k: v for k, v in edited.items() if k.startswith("outdir")})
        if problems:
            raise gr.Error(f"Settings not saved: {'; '.join(problems)}", print_exception=False)
        try:
            changed = self.settings.update(edited) if edited else []
        except SettingsError as exc:
            raise gr.Error(f"Settings not saved: {exc}", print_exception=False) from None
        except OSError as exc:
            raise gr.Error(f"Settings not saved: cannot write {self.settings.path}: {exc}",
                           print_exception=False) from None
        reloads = self.apply_model_settings()
        notice = self.settings.save_notice if edited else None
        if notice:  # the user's file was unreadable: it is kept aside, and they must know
            gr.Warning(notice)
        if not changed and not reloads:
            return f"Nothing changed ({self.settings.place})" + (f". {notice}" if notice else "")
        needs_reload = [k for k in changed if k.startswith("default_")]
        text = f"Saved {len(changed)} setting(s) to {self.settings.place}; they apply to the next job"
        if reloads:
            text += " (which loads the checkpoint again)"
        if needs_reload:
            text += "; new defaults show when the page is reloaded"
        if notice:
            text += f". {notice}"
        return text

    def apply_model_settings(self) -> bool:
        """Hand the settings' sd_model_prediction and sd_noise_schedule to the engine; True when
        that changes them (the engine loads the checkpoint again at the next job). The values
        saved last, here or through the API, are the engine's."""
        if not hasattr(self.engine, "prediction"):
            return False
        wanted = engine_overrides(self.settings.values())
        if (self.engine.prediction, self.engine.zero_terminal_snr) == wanted:
            return False
        self.engine.prediction, self.engine.zero_terminal_snr = wanted
        return True

    def page_defaults(self) -> dict[str, Any]:
        s = self.settings
        return {"sampler": s["default_sampler"], "scheduler": s["default_scheduler"], "steps": s["default_steps"],
                "cfg_scale": s["default_cfg_scale"], "width": s["default_width"], "height": s["default_height"],
                "denoising_strength": s["default_denoising_strength"]}

    def save_style(self, name: str, prompt: str, negative_prompt: str) -> str:
        try:
            style = self.styles.save_style(name, prompt, negative_prompt)
        except StyleError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        except OSError as exc:
            raise gr.Error(f"styles: cannot write {self.styles.path}: {exc}", print_exception=False) from None
        return f"Style {style.name!r} saved to {self.styles.path}"

    def delete_style(self, name: str) -> str:
        try:
            self.styles.delete_style(name)
        except StyleError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return f"Style {name!r} deleted"

    def apply_styles_to_prompt(self, names: list[str] | None, prompt: str, negative: str) -> tuple[str, str, list]:
        try:
            prompt, negative = self.styles.apply(names or [], prompt or "", negative or "")
        except StyleError as exc:
            raise gr.Error(str(exc), print_exception=False) from None
        return prompt, negative, []


# ---------------------------------------------------------------------- helpers


def _same_setting(key: str, value: Any, shown: Any) -> bool:
    """Whether the page's ``value`` for setting ``key`` is the one it showed (as the setting
    reads it: a number box's 25.0 is the 25 shown)."""
    try:
        return OPTION_BY_KEY[key].check(value) == shown
    except (ValueError, TypeError):
        return False  # not a value the setting takes: saving says why


def _number(value: Any) -> Any:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return value


def _index(value: Any, names: Sequence[str]) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if value in names:
        return names.index(value)
    return 0


def _open_upload(value: Any, what: str) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    try:
        with Image.open(value) as image:
            image.load()
            return image.copy()
    except Exception as exc:
        raise gr.Error(f"{what}: not a readable image ({type(exc).__name__})", print_exception=False) from None


def editor_image_and_mask(value: Any) -> tuple[Image.Image, Image.Image | None]:
    """gr.ImageEditor's value -> (the image, an L mask: white where any layer was painted).
    The mask is None when nothing was painted."""
    if not isinstance(value, dict) or value.get("background") is None:
        raise gr.Error("Inpaint: upload an image to paint on first", print_exception=False)
    background = _open_upload(value["background"], "image")
    mask = Image.new("L", background.size, 0)
    painted = False
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        layer = _open_upload(layer, "mask layer")
        if layer.mode != "RGBA":
            layer = layer.convert("RGBA")
        alpha = layer.getchannel("A")
        if alpha.size != background.size:
            alpha = alpha.resize(background.size, Image.NEAREST)
        if alpha.getbbox() is None:
            continue
        from PIL import ImageChops

        mask = ImageChops.lighter(mask, alpha.point(lambda v: 255 if v > 0 else 0))
        painted = True
    return background, (mask if painted else None)
