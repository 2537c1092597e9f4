"""The generation tabs (txt2img, img2img, inpaint): a form becomes a job that runs in a
thread while the page shows its progress and previews; the pictures are saved where the
settings say; a result, a gallery picture or an infotext can be sent to a tab's form."""
from __future__ import annotations

import logging
import random
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import gradio as gr
from PIL import Image

from app.forms import (FORM_FIELDS, FormError, checkpoint_title_name, complete_form, params_from_form,
                       script_from_form, tab_fields, values_from_infotext)
from app.page.messages import error_message, log_html, progress_html
from app.page.models import Models
from app.page.outputs import Outputs
from app.page.uploads import job_pictures
from app.preview import latent_preview
from app.settings import Settings
from app.styles import StyleDatabase, StyleError
from core.engine_protocol import EngineProtocol
from core.errors import NOT_FOUND, EngineError
from core.params import GenerationParams
from core.scripts import Plan, ScriptContext, find_script, run_plan
from core.scripts.grids import grid_folder, image_grid

log = logging.getLogger(__name__)


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

    def record(self, progress: Any, preview_every: int) -> None:
        """The engine's progress callback: a preview every ``preview_every`` steps and at the last."""
        preview = None
        if preview_every > 0 and (progress.step % preview_every == 0 or progress.step == progress.steps):
            try:
                preview = latent_preview(progress.latent, progress.latent_format)
            except Exception:  # a preview never breaks a job
                log.debug("preview failed", exc_info=True)
        with self.lock:
            self.progress = progress
            if preview is not None:
                self.preview = preview
            self.version += 1


@dataclass
class Generation:
    """The generation tabs' behaviour, over what they share with the rest of the page."""
    engine: EngineProtocol
    settings: Settings
    styles: StyleDatabase
    outputs: Outputs
    models: Models

    # ------------------------------------------------------------------ parameters

    @staticmethod
    def form(tab: str, values: Sequence[Any] | dict[str, Any]) -> dict[str, Any]:
        """Positional values in FORM_FIELDS[tab] order (as Gradio passes them), or a partial
        dict, -> a complete form."""
        return complete_form(tab, values)

    def make_params(self, tab: str, form: dict[str, Any]) -> GenerationParams:
        """GenerationParams from a form, the styles applied to the prompts."""
        try:
            return params_from_form(tab, form, self.styles.apply)
        except (FormError, StyleError) as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    # ------------------------------------------------------------------ running jobs

    def run_job(self, tab: str, form: dict[str, Any], progress: Callable[[Any], None] | None = None) -> JobResult:
        """Run one txt2img/img2img/inpaint job to the end; raises on failure."""
        params = self.make_params(tab, form)
        engine_saves = self.outputs.engine_saves(tab)
        plan = self.script_plan(tab, form, params)
        if plan is not None:
            return self.run_script(tab, form, params, plan, progress, engine_saves)
        if tab == "txt2img":
            results = self.engine.txt2img(params, progress=progress, save=engine_saves)
            notes: list[str] = []
        else:
            image, mask, notes = job_pictures(tab, form, params)
            results = self.engine.img2img(params, image, mask, progress=progress, save=engine_saves)
        job = JobResult(notes=list(notes))
        job.interrupted = self.engine.flags.interrupted
        for result in results:
            self._keep(tab, job, result, params, engine_saves)
        if len(results) > 1:  # A1111's batch grid: saved, not shown
            first = results[0]
            self._save_grid(tab, image_grid([r.image for r in results]), first.seed, first.infotext, job)
        expected = params.batch_count * params.batch_size
        finished = sum(not item["incomplete"] for item in job.items)
        if job.interrupted:
            job.notes.append(f"Interrupted: {finished} of {expected} images made")
        elif finished < expected:
            job.notes.append(f"Skipped: {finished} of {expected} images made")
        return job

    # ------------------------------------------------------------------ scripts

    def script_plan(self, tab: str, form: dict[str, Any], params: GenerationParams) -> Plan | None:
        """The Script menu's choice as core's plan of jobs (None for None); a bad argument is a
        message naming it."""
        try:
            name, args = script_from_form(tab, form)
            if name is None:
                return None
            return find_script(name, tab == "img2img").plan(params, args, tab == "img2img", self.script_context())
        except (FormError, EngineError) as exc:
            raise gr.Error(str(exc), print_exception=False) from None

    def script_context(self) -> ScriptContext:
        def find_checkpoint(name: str, field: str) -> str:
            found = self.models.match_checkpoint(checkpoint_title_name(name))
            if found is None:
                raise EngineError(f"checkpoint {name!r} not found", field, NOT_FOUND)
            return found

        return ScriptContext(find_checkpoint=find_checkpoint,
                             upscalers=self.models.upscalers, random_seed=lambda: random.randrange(4294967294))

    def run_script(self, tab: str, form: dict[str, Any], params: GenerationParams, plan: Plan,
                   progress: Callable[[Any], None] | None, engine_saves: bool) -> JobResult:
        """A script's jobs one after another; its grids (saved in the grids folder unless the
        grid_save setting is off) shown first, then the pictures when the script returns them."""
        image, mask, notes = job_pictures(tab, form, params) if tab != "txt2img" else (None, None, [])
        outcome = run_plan(self.engine, plan, tab, image, mask, progress, save=engine_saves, save_grids=False)
        job = JobResult(notes=list(notes))
        job.interrupted = self.engine.flags.interrupted
        for grid in outcome.grids:
            path = self._save_grid(tab, grid.image, grid.seed, grid.infotext, job)
            job.items.append({"path": str(path) if path else None, "infotext": grid.infotext, "seed": grid.seed,
                              "image": grid.image if path is None else None})
        shown = job if outcome.include_pictures or not outcome.grids else JobResult()  # saved, not shown
        for result in outcome.pictures:
            self._keep(tab, shown, result, params, engine_saves)
        job.save_errors += shown.save_errors if shown is not job else []
        if job.interrupted:
            expected = sum(j.batch_count * j.batch_size for j in plan.jobs)
            job.notes.append(f"Interrupted: {len(outcome.pictures)} of {expected} images made")
        return job

    def _save_grid(self, tab: str, image: Any, seed: int, infotext: str, job: JobResult) -> Path | None:
        """A grid saved in the grids folder of the output folder (txt2img-grids, img2img-grids)
        when the grid_save setting is on; None when off or the folder could not take it."""
        from core.engine import save_image_or_say_why

        if not self.settings["grid_save"]:
            return None
        kind = "txt2img" if tab == "txt2img" else "img2img"
        path, save_error = save_image_or_say_why(image, grid_folder(self.outputs.output_root(), kind), seed, infotext)
        if save_error is not None:
            job.save_errors.append(save_error)
        return path

    def _keep(self, tab: str, job: JobResult, result: Any, params: Any, engine_saves: bool) -> None:
        """Add one of the engine's results to ``job``, saved by the page unless the engine did."""
        path, save_error = result.path, result.save_error
        if save_error is not None:
            job.save_errors.append(save_error)
        elif result.incomplete:  # an interrupted picture: shown, never saved (A1111's default)
            path = None
        elif path is None or not engine_saves:
            path = self.outputs.save_or_say_why(
                lambda: self.outputs.save(tab, result.image, result.infotext, params, result.seed),
                self.outputs.folder(tab), job.save_errors)
        # "image": the picture itself when no file holds it, so the page can still show it
        job.items.append({"path": str(path) if path is not None else None, "infotext": result.infotext,
                          "seed": result.seed, "image": result.image if path is None else None,
                          "incomplete": result.incomplete})
        for note in result.notes:
            if note not in job.notes:
                job.notes.append(note)

    def stream(self, tab: str, values: Sequence[Any] | dict[str, Any]) -> Iterator[tuple]:
        """Run a job in a thread and yield (gallery, info, log, progress, results) while it
        runs: progress every poll, a preview image when one is due, the results at the end.
        Errors end as a message in the log and a Gradio error toast; the page stays usable."""
        form = self.form(tab, values)
        live = _Live()
        every = int(self.settings["preview_every"])
        started = time.monotonic()
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["result"] = self.run_job(tab, form, lambda p: live.record(p, every))
            except BaseException as exc:  # reported to the page below
                outcome["error"] = exc

        thread = threading.Thread(target=work, name=f"studio-{tab}", daemon=True)
        skip = gr.skip()
        yield (skip, skip, "", progress_html(None, text="Starting…"), skip)
        thread.start()
        shown: dict[str, Any] = {"preview": None}
        try:
            yield from self._while_running(thread, live, started, shown)
        except GeneratorExit:  # the page went away or the event was cancelled: stop the job too
            self.interrupt()
            raise
        if "error" in outcome:
            yield from self._failed(outcome["error"], shown["preview"] is not None)
        yield self._finished(outcome["result"], time.monotonic() - started)

    def _while_running(self, thread: threading.Thread, live: _Live, started: float,
                       shown: dict[str, Any]) -> Iterator[tuple]:
        """Updates while ``thread`` runs: the progress bar and new previews, or the loading bar
        while the job waits for a checkpoint. ``shown["preview"]``: the last preview shown."""
        skip = gr.skip()
        seen_version, shown_loading = 0, ""
        while thread.is_alive():
            thread.join(0.25)
            with live.lock:
                version, progress, preview = live.version, live.progress, live.preview
            if version != seen_version:
                seen_version = version
                gallery_value = skip
                if preview is not None and preview is not shown["preview"]:
                    shown["preview"] = preview
                    gallery_value = [(preview, "preview")]
                yield (gallery_value, skip, skip, progress_html(progress, started), skip)
            elif (loading := self.models.loading_bar()) != shown_loading:
                shown_loading = loading
                if loading:
                    yield (skip, skip, skip, loading, skip)

    @staticmethod
    def _failed(exc: BaseException, preview_shown: bool) -> Iterator[tuple]:
        message = error_message(exc)
        if not isinstance(exc, (EngineError, gr.Error)):
            log.error("job failed:\n%s", "".join(traceback.format_exception(exc)))
        skip = gr.skip()
        yield ([] if preview_shown else skip, skip, log_html([], message), "", skip)
        raise gr.Error(message, print_exception=False)

    @staticmethod
    def _finished(job: JobResult, elapsed: float) -> tuple:
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
        return (gallery_value, info, log_html(notes), "", job.items)

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

    def picked(self, items: list[dict] | None, evt: gr.SelectData) -> tuple[int, str]:
        """(index, infotext) of the result picked in a results gallery."""
        index = evt.index if isinstance(evt.index, int) else 0
        return index, self.select_result(items, index)

    def reuse_seed(self, items: list[dict] | None, index: int | None) -> Any:
        item = self.selected_item(items, index)
        return item["seed"] if item else gr.skip()

    def sent_result(self, items: list[dict] | None, index: int | None) -> tuple[Any, str]:
        """(picture, infotext) a results gallery sends to another tab."""
        item = self.selected_item(items, index)
        return (item["path"] or item.get("image"), item["infotext"]) if item else (None, "")

    # ------------------------------------------------------------------ infotext -> fields

    def fields_from_infotext(self, text: str | None, tab: str) -> tuple[dict[str, Any], list[str]]:
        """The form fields of ``tab`` an infotext gives values for, and notes on what it could
        not use. Only fields the text names are returned: the rest of the form is left as is."""
        values, value_notes = values_from_infotext(text)
        fields, notes = tab_fields(tab, values, value_notes)
        if "hr_upscaler" in fields:
            listed = self.models.listed_hires_upscaler(fields["hr_upscaler"])
            if listed is None:
                notes.append(f"Hires upscaler: {fields.pop('hr_upscaler')!r} is not available")
            else:
                fields["hr_upscaler"] = listed
        if "checkpoint" in fields:
            model = fields.pop("checkpoint")
            match = self.models.match_checkpoint(model)
            if match:
                fields["checkpoint"] = match
            else:
                notes.append(f"Model: {model!r} is not in the checkpoint folder")
        if "refiner_checkpoint" in fields:
            title = fields.pop("refiner_checkpoint")
            match = self.models.match_checkpoint(checkpoint_title_name(title))
            if match:
                fields["refiner_checkpoint"] = match
            else:
                notes.append(f"Refiner: {title!r} is not in the checkpoint folder")
        return fields, notes

    def field_updates(self, tab: str, text: str | None, names: Sequence[str]) -> tuple[list[Any], list[str]]:
        """Values for components ``names`` (gr.skip() for fields the text does not give)."""
        fields, notes = self.fields_from_infotext(text, tab)
        return [fields[name] if name in fields else gr.skip() for name in names], notes

    @staticmethod
    def check_sendable(path: Any, infotext: str | None) -> None:
        """A gr.Error when a send-to button has nothing to send."""
        if not path and not infotext:
            raise gr.Error("Nothing to send: make or pick an image first", print_exception=False)

    @staticmethod
    def send_to_extras(path: Any, infotext: str) -> list[Any]:
        """The updates "send to Super-resolution" makes: select it, with the picture as its single image."""
        return [gr.Tabs(selected="extras"), path if path else gr.skip(), "Single image"]

    def send_to(self, tab: str, path: str | None, infotext: str, names: Sequence[str]) -> list[Any]:
        """The updates "send to ``tab``" makes: select the tab, put the picture (at ``path``)
        into its image fields (img2img: the input; inpaint: the editor and the upload), and the
        infotext's values into the fields ``names``."""
        values, notes = self.field_updates(tab, infotext, names)
        if not self.settings["send_seed"]:
            values = [gr.skip() if name in SEED_FIELDS else value for name, value in zip(names, values)]
        if notes:
            gr.Info("; ".join(notes[:4]))
        pictures: list[Any] = []
        if tab == "img2img":
            pictures = [path] if path else [gr.skip()]
        elif tab == "inpaint":
            pictures = ([{"background": path, "layers": [], "composite": path}, path] if path
                        else [gr.skip(), gr.skip()])
        return [gr.Tabs(selected=tab), *pictures, *values]


# Form fields "send to" never fills from an infotext (pictures, per-tab choices), and the
# picture fields it fills from the picture, per tab.
NOT_FROM_TEXT = {"styles", "init_image", "editor", "inpaint_image", "inpaint_mask", "inpaint_source",
                 "outpaint_directions", "outpaint_pixels", "resize_mode"}
PICTURE_FIELDS = {"txt2img": (), "img2img": ("init_image",), "inpaint": ("editor", "inpaint_image")}
# What "send to" leaves as the target tab has it when the send_seed setting is off.
SEED_FIELDS = ("seed", "subseed")


def text_fields(tab: str) -> list[str]:
    """The fields of ``tab`` an infotext can fill, in form order."""
    return [name for name in FORM_FIELDS[tab] if name not in NOT_FROM_TEXT]
