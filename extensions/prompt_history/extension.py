"""Prompt history: every generation (UI, REST API, command line) recorded in a SQLite
database beside the outputs (``<output_dir>/history.sqlite3``), searchable from a UI tab
and REST routes, exportable as JSON.

One entry per job, with its images: the entry is written with the job's first image, each
further image is added as it is saved (so a job that fails half-way keeps what it made), and
``after_job`` marks the entry done, interrupted or failed (the job raised) with the time it took.

The database logic is in store.py (no Gradio), the tab in ui.py, the routes in routes.py.
"""
from __future__ import annotations

import importlib.util
import logging
import sqlite3
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
log = logging.getLogger(__name__)


def load_module(name: str):
    """A module of this folder (store, ui, routes), loaded once by file path: the extension
    loader imports extension.py as a lone module, not as a package."""
    module_name = f"sd_extension_prompt_history_{name}"
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    return module


store = load_module("store")


class Recorder:
    """The hooks' state: one store per output folder, and the entry of each job in progress."""

    def __init__(self):
        self._lock = threading.Lock()
        self._stores: dict[Path, object] = {}
        self._jobs: dict[int, list] = {}  # id(job) -> [store, entry id, images so far]

    def store_for(self, engine) -> "store.HistoryStore":
        path = Path(engine.output_dir) / store.DB_NAME
        with self._lock:
            found = self._stores.get(path)
            if found is None:
                found = self._stores[path] = store.HistoryStore(path)
            return found

    def image_saved(self, job, result) -> None:
        try:
            self._image_saved(job, result)
        except (sqlite3.Error, OSError, store.HistoryError):
            # not raised to the engine, which would disable the history for good: the next
            # job is recorded again once the database is writable
            log.exception("prompt history: could not record an image of %r", getattr(job.params, "prompt", ""))

    def job_done(self, job, results) -> None:
        try:
            self._job_done(job)
        except (sqlite3.Error, OSError, store.HistoryError):
            log.exception("prompt history: could not finish the entry of %r", getattr(job.params, "prompt", ""))

    def _image_saved(self, job, result) -> None:
        engine = job.engine
        image = {
            "seed": int(result.seed),
            "subseed": variation_seed(result.infotext),
            "path": result.path,
            "infotext": result.infotext,
            "created": time.time(),
        }
        with self._lock:
            state = self._jobs.get(id(job))
        if state is not None:
            db, entry_id, count = state
            db.add_images(entry_id, [dict(image, position=count)])
            state[2] += 1
            return
        db = self.store_for(engine)
        params = job.params
        loaded = getattr(engine, "loaded", None)
        seed = getattr(params, "seed", -1)
        entry = {
            "created": job.started or time.time(),
            "kind": job.kind,
            "status": "running",
            "prompt": getattr(params, "prompt", ""),
            "negative_prompt": getattr(params, "negative_prompt", ""),
            "params": store.params_to_dict(params),
            "model_name": getattr(loaded, "name", None),
            "model_hash": getattr(loaded, "hash", None),
            "seed": seed if isinstance(seed, int) and seed >= 0 else int(result.seed),
        }
        entry_id = db.begin_entry(entry, [dict(image, position=0)])
        with self._lock:
            self._jobs[id(job)] = [db, entry_id, 1]

    def _job_done(self, job) -> None:
        with self._lock:
            state = self._jobs.pop(id(job), None)
        if state is None:
            return  # no image was made
        db, entry_id, _ = state
        flags = getattr(job.engine, "flags", None)
        if getattr(job, "error", None) is not None:
            status = "failed"  # the images made before the error are kept with the entry
        else:
            status = "interrupted" if getattr(flags, "interrupted", False) else "done"
        finished = time.time()
        db.finish_entry(entry_id, status=status, finished=finished,
                        duration=finished - job.started if job.started else None)



def variation_seed(infotext: str | None) -> int | None:
    """The image's variation seed from its infotext, when it has one."""
    if not infotext or "Variation seed:" not in infotext:
        return None
    from core.infotext import parse_infotext

    try:
        return int(parse_infotext(infotext)["Variation seed"])
    except (KeyError, ValueError):
        return None


def setup(api) -> None:
    recorder = Recorder()
    api.on("after_image_saved", recorder.image_saved)
    api.on("after_job", recorder.job_done)

    def build_tab(engine):
        return load_module("ui").build(recorder.store_for(engine), engine)

    build_tab.title = "History"

    def add_routes(app, engine):
        load_module("routes").add_routes(app, lambda: recorder.store_for(engine), store)

    api.add_ui_tab(build_tab)
    api.add_api_routes(add_routes)
