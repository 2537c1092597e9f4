"""The Super-resolution tab: upscaling one picture or a folder of them with an upscaler, or
with SD upscale (the checkpoint redraws the enlarged picture in img2img tiles)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import gradio as gr
from PIL import Image

from app.forms import FORM_FIELDS
from app.imagefiles import IMAGE_SUFFIXES, inside_folders, read_metadata
from app.page.generation import Generation
from app.page.messages import error_message, log_html
from app.page.outputs import Outputs
from app.settings import Settings, default_allowed_dirs
from core.engine_protocol import EngineProtocol

BATCH = "Batch from folder"
BATCH_SUFFIXES = IMAGE_SUFFIXES + (".bmp", ".tif", ".tiff")


def default_upscaler(upscalers: list[str]) -> str | None:
    if "Lanczos" in upscalers:
        return "Lanczos"
    return upscalers[0] if upscalers else None


@dataclass
class _Batch:
    """One Upscale click: its pictures, where they go, and what came of each."""
    sources: list[Path]
    out_dir: Path | None  # a batch's own output folder; None: the tab's folder
    progress: Callable[[float, str], None] | None
    done: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unsaved: list[str] = field(default_factory=list)  # why a picture could not be saved, one per such picture

    def tell(self, fraction: float, text: str) -> None:
        if self.progress is not None:
            self.progress(fraction, text)


class SuperResolution:
    """``allowed_dirs``: the folders batches may read and write (default: the output folder and
    inputs/ beside launch.py)."""

    def __init__(self, engine: EngineProtocol, settings: Settings, outputs: Outputs, generation: Generation,
                 allowed_dirs: Sequence[str | Path] | None = None):
        self.engine = engine
        self.settings = settings
        self.outputs = outputs
        self.generation = generation
        self.allowed_dirs = ([Path(p) for p in allowed_dirs] if allowed_dirs
                             else default_allowed_dirs(outputs.engine_output_root()))

    def page_job(self, sd_keys: Sequence[str]) -> Callable[..., tuple]:
        """The Upscale button's event: the tab's values, the SD upscale fields ``sd_keys`` last,
        with Gradio's progress bar."""
        def upscale(mode, image, in_dir, out_dir, upscaler, how, factor, w, h, *sd_values, progress=gr.Progress()):
            return self.upscale(mode, image, in_dir, out_dir, upscaler, how, factor, w, h,
                                progress=lambda frac, desc: progress(frac, desc=desc), sd=dict(zip(sd_keys, sd_values)))

        return upscale

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
            from core.upscaling.extras import KEEP_AS_IS, ExtrasJob
        except ImportError as exc:
            raise gr.Error(f"Super-resolution is not available: {exc}", print_exception=False) from None
        if not upscaler:
            raise gr.Error("Super-resolution: choose an upscaler", print_exception=False)
        by_size = resize_mode == "Scale to"
        size = (int(width or 0), int(height or 0)) if by_size else None
        factor = None if by_size else float(scale or 0)
        job = ExtrasJob(upscaler=upscaler, scale=factor, size=size, tile=self.settings["ESRGAN_tile"],
                        overlap=self.settings["ESRGAN_tile_overlap"])
        batch = _Batch(*self._sources(mode, image_path, input_dir, output_dir), progress)
        total = len(batch.sources)
        for number, source in enumerate(batch.sources):
            batch.tell(number / total, f"{source.name} ({number + 1}/{total})")
            try:
                picture = open_image(source)
                if sd and sd.get("enabled"):
                    result, text, saved = self._sd_upscale(picture, upscaler, factor, size, sd, batch, number,
                                                           source.stem)
                else:
                    result, text, saved = self._upscale_one(picture, job, batch, number, source)
            except Exception as exc:
                message = error_message(exc, "Upscaling")
                if total == 1:
                    raise gr.Error(message, print_exception=False) from None
                batch.notes.append(f"{source.name}: {message}")
                continue
            # "image": the picture itself when no file holds it, so the page can still show it
            batch.done.append({"path": str(saved) if saved else None, "infotext": text, "seed": None,
                               "image": None if saved else result,
                               "size": f"{picture.width}x{picture.height} → {result.width}x{result.height}"})
        if upscaler == KEEP_AS_IS and not (sd and sd.get("enabled")):
            batch.notes.append(f"Upscaler {KEEP_AS_IS}: the picture keeps its size (no resampling, as in A1111)")
        return self._summary(batch)

    def _sources(self, mode: str, image_path: str | None, input_dir: str,
                 output_dir: str) -> tuple[list[Path], Path | None]:
        """(the pictures to upscale, the batch's output folder or None)."""
        if mode != BATCH:
            if not image_path:
                raise gr.Error("Super-resolution: upload an image first", print_exception=False)
            return [Path(image_path)], None
        self._check_allowed_dir(input_dir, "input folder")
        if output_dir:
            self._check_allowed_dir(output_dir, "output folder")
        if not input_dir or not Path(input_dir).expanduser().is_dir():
            raise gr.Error(f"Super-resolution: {input_dir!r} is not a folder", print_exception=False)
        sources = sorted(p for p in Path(input_dir).expanduser().iterdir()
                         if p.is_file() and p.suffix.lower() in BATCH_SUFFIXES)
        if not sources:
            raise gr.Error(f"Super-resolution: no images in {input_dir}", print_exception=False)
        return sources, Path(output_dir).expanduser() if output_dir else None

    def _upscale_one(self, picture: Image.Image, job: Any, batch: _Batch, number: int,
                     source: Path) -> tuple[Image.Image, str, Path | None]:
        """The engine's upscale of one picture, its infotext (the source's, added to) and its file."""
        try:
            original = read_metadata(source).get("parameters")
        except Exception:
            original = None
        total = len(batch.sources)

        def on_tile(done: int, tiles: int) -> None:
            batch.tell((number + done / max(tiles, 1)) / total,
                       f"{source.name} ({number + 1}/{total}): tile {done}/{tiles}")

        upscaled = self.engine.extras(picture, job, progress=on_tile, source_infotext=original)
        return upscaled.image, upscaled.infotext, self._save(batch, "extras", source.stem, upscaled.image,
                                                              upscaled.infotext)

    def _save(self, batch: _Batch, tab: str, stem: str, image: Image.Image, infotext: str | None,
              params: Any = None, seed: int | None = None) -> Path | None:
        """Save in the batch's output folder, or else the tab's; None (and why, in
        ``batch.unsaved``) when the folder cannot take it."""
        if batch.out_dir is not None:
            return self.outputs.save_or_say_why(lambda: self.outputs.save_in(batch.out_dir, stem, image, infotext),
                                                batch.out_dir, batch.unsaved)
        return self.outputs.save_or_say_why(lambda: self.outputs.save(tab, image, infotext, params, seed),
                                            self.outputs.folder(tab), batch.unsaved)

    @staticmethod
    def _summary(batch: _Batch) -> tuple[list, str, str, list[dict]]:
        done, notes, unsaved = batch.done, batch.notes, batch.unsaved
        saved_paths = [d["path"] for d in done if d["path"]]
        if done:
            notes.append(f"{len(done)} of {len(batch.sources)} image(s) upscaled"
                         + (f", saved to {Path(saved_paths[0]).parent}" if saved_paths else ""))
        if unsaved:
            warning = (f"{len(unsaved)} of {len(done)} image(s) {unsaved[0]}. They are only on this page: "
                       "download them before making more (free space or pick another output folder)")
            notes.append(warning)
            gr.Warning(warning)
        gallery = [(d["path"] or d["image"], d["size"]) for d in done]
        return gallery, done[0]["infotext"] if done else "", log_html(notes), done

    def _check_allowed_dir(self, folder: str | None, what: str) -> None:
        """A gr.Error naming ``folder`` and the allowed ones unless it lies inside one of them
        (the page may name any path; only those given to launch.py --allowed-dir are used)."""
        if not folder or inside_folders(folder, self.allowed_dirs):
            return
        allowed = ", ".join(str(d) for d in self.allowed_dirs)
        raise gr.Error(f"Super-resolution: the {what} {folder} is outside the allowed folders ({allowed}); "
                       f"start launch.py with --allowed-dir to add one", print_exception=False)

    def _sd_upscale(self, picture: Image.Image, upscaler: str, factor: float | None, size: tuple[int, int] | None,
                    sd: dict[str, Any], batch: _Batch, number: int, stem: str) -> tuple[Image.Image, str, Path | None]:
        if factor is None:  # SD upscale takes a factor: the one that reaches the asked width (or height)
            factor = size[0] / picture.width if size[0] else size[1] / picture.height
        tile = int(float(sd.get("tile") or 512))
        form = self.generation.form("img2img", {k: v for k, v in sd.items() if k in FORM_FIELDS["img2img"]})
        form.update(width=tile, height=tile, batch_count=1, batch_size=1)
        params = self.generation.make_params("img2img", form)
        total = len(batch.sources)

        def on_step(p: Any) -> None:
            batch.tell((number + p.fraction) / total,
                       f"SD upscale {number + 1}/{total}: step {p.step}/{p.steps}")

        saves = self.outputs.engine_saves("img2img") and batch.out_dir is None
        results = self.engine.sd_upscale(params, picture, upscaler=upscaler, scale=float(factor),
                                         overlap=int(float(sd.get("overlap") or 64)), progress=on_step, save=saves)
        if not results:
            raise gr.Error("SD upscale was interrupted", print_exception=False)
        result = results[0]
        if saves and result.save_error:
            batch.unsaved.append(result.save_error)
            return result.image, result.infotext, None
        if saves and result.path is not None:
            return result.image, result.infotext, result.path
        return result.image, result.infotext, self._save(batch, "img2img", stem, result.image, result.infotext,
                                                          params, result.seed)
