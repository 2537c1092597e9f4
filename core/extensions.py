"""The extension hook API: plugins change what the engine does without patching it.

An extension is a folder in ``extensions/`` holding ``extension.py`` with a function
``setup(api: ExtensionAPI)`` that registers callbacks. The engine calls them at fixed points
(see HOOKS and docs/EXTENSIONS.md). A callback that raises is reported with the extension's
name, the extension is disabled, and the job goes on without it.
"""
from __future__ import annotations

import importlib.util
import logging
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

# Hook name -> when the engine calls it and with what.
HOOKS = {
    "extra_network": "before sampling, once per job for each registered tag kind: fn(job, tags) with the "
                     "job's <kind:...> tags (maybe none); returns a dict of infotext fields or None",
    "before_model_load": "fn(path) before a checkpoint is read",
    "after_model_load": "fn(loaded) after a checkpoint is built (loaded.model, loaded.name, loaded.path)",
    "before_sampling": "fn(job) after extra networks, before the first batch; may change job.params or the model",
    "after_image_saved": "fn(job, result) after each image is made (result.path is None when not saved)",
    "after_job": "fn(job, results) once the whole job is done (also after an interrupt, and after an error: "
                 "job.error is then the exception, results what was made before it)",
    "model_unloaded": "fn(loaded) after the engine let go of a model (switching checkpoints, unload)",
}


@dataclass
class Extension:
    name: str
    path: Path | None
    enabled: bool = True
    error: str | None = None
    ui_tabs: list[Callable] = field(default_factory=list)  # fn(engine) -> (title, gradio component builder)
    api_routes: list[Callable] = field(default_factory=list)  # fn(app, engine) adds FastAPI routes
    settings: dict[str, tuple[Any, str]] = field(default_factory=dict)  # key -> (default, label)


@dataclass
class Job:
    """What a hook sees of the job in progress."""

    engine: Any
    params: Any
    kind: str  # "txt2img" or "img2img"
    model: Any
    infotext_fields: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # shown to the user with every result
    started: float = 0.0
    error: BaseException | None = None  # set when the job failed, before after_job runs


class ExtensionAPI:
    """Handed to ``setup``: the only way an extension hooks into the engine."""

    def __init__(self, registry: "ExtensionRegistry", extension: Extension):
        self._registry = registry
        self.extension = extension

    def on(self, hook: str, fn: Callable) -> None:
        if hook not in HOOKS:
            raise ValueError(f"unknown hook {hook!r} (known: {', '.join(HOOKS)})")
        self._registry.callbacks.setdefault(hook, []).append((self.extension, fn))

    def on_extra_network(self, kind: str, fn: Callable, check: Callable | None = None) -> None:
        """``fn(job, tags)`` for prompt tags ``<kind:name:args...>``; called every job, with an empty
        list when the prompt has none (so the extension can undo what it did last time).

        ``check(tags)``, when given, runs before the job starts (before any model is loaded) with
        the job's tags of this kind; it refuses a tag the user must fix (a weight out of range)
        by raising core.errors.EngineError, whose message is the job's error."""
        self._registry.extra_networks.setdefault(kind, []).append((self.extension, fn))
        if check is not None:
            self._registry.extra_network_checks.setdefault(kind, []).append((self.extension, check))

    def add_ui_tab(self, fn: Callable) -> None:
        self.extension.ui_tabs.append(fn)

    def add_api_routes(self, fn: Callable) -> None:
        self.extension.api_routes.append(fn)

    def add_setting(self, key: str, default: Any, label: str) -> None:
        self.extension.settings[key] = (default, label)

    @property
    def engine(self):
        return self._registry.engine


class ExtensionRegistry:
    def __init__(self, engine=None):
        self.engine = engine
        self.extensions: dict[str, Extension] = {}
        self.callbacks: dict[str, list[tuple[Extension, Callable]]] = {}
        self.extra_networks: dict[str, list[tuple[Extension, Callable]]] = {}
        self.extra_network_checks: dict[str, list[tuple[Extension, Callable]]] = {}

    def load_folder(self, folder: Path, disabled: set[str] | frozenset = frozenset()) -> None:
        if not folder.is_dir():
            return
        for path in sorted(p for p in folder.iterdir() if (p / "extension.py").is_file()):
            extension = Extension(path.name, path)
            self.extensions[path.name] = extension
            if path.name in disabled:
                extension.enabled = False
                continue
            self._setup(extension, path / "extension.py")

    def add(self, name: str, setup: Callable[[ExtensionAPI], None]) -> Extension:
        """Register an extension from code (tests, embedding applications)."""
        extension = Extension(name, None)
        self.extensions[name] = extension
        self._guard(extension, "setup", setup, ExtensionAPI(self, extension))
        return extension

    def _setup(self, extension: Extension, file: Path) -> None:
        module_name = f"sd_extension_{extension.name.replace('-', '_')}"
        try:
            spec = importlib.util.spec_from_file_location(module_name, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
            setup = getattr(module, "setup")
        except Exception as e:  # noqa: BLE001 - a broken extension must not stop the app
            self._fail(extension, "import", e)
            return
        self._guard(extension, "setup", setup, ExtensionAPI(self, extension))

    def _fail(self, extension: Extension, where: str, error: BaseException) -> None:
        extension.enabled = False
        extension.error = f"{where}: {type(error).__name__}: {error}"
        log.error("extension %s failed in %s and is disabled: %s\n%s", extension.name, where, error,
                  "".join(traceback.format_exception(error)))

    def _guard(self, extension: Extension, where: str, fn: Callable, *args):
        if not extension.enabled:
            return None
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001
            self._fail(extension, where, e)
            return None

    def run(self, hook: str, *args) -> list:
        """Call every enabled extension's callback for ``hook`` in registration order."""
        return [self._guard(ext, hook, fn, *args) for ext, fn in self.callbacks.get(hook, [])]

    def run_extra_networks(self, job: Job, tags: list) -> dict:
        """Hand each registered kind its tags; unknown kinds are reported, not fatal.
        Returns the infotext fields the handlers gave back."""
        fields: dict = {}
        for kind, handlers in self.extra_networks.items():
            mine = [t for t in tags if t.kind == kind]
            for ext, fn in handlers:
                result = self._guard(ext, f"extra network <{kind}:...>", fn, job, mine)
                if isinstance(result, dict):
                    fields.update(result)
        unknown = sorted({t.kind for t in tags} - set(self.extra_networks))
        if unknown:
            log.warning("no extension handles prompt tags of kind: %s", ", ".join(unknown))
        return fields

    def check_extra_networks(self, tags: list) -> None:
        """Each enabled extension's check of its kind's tags (see on_extra_network). An
        EngineError is the user's to fix and goes to the caller; anything else is a bug of the
        extension, which is disabled as for any hook."""
        from core.errors import EngineError

        for kind, checks in self.extra_network_checks.items():
            mine = [t for t in tags if t.kind == kind]
            for ext, check in checks:
                if not mine or not ext.enabled:
                    continue
                try:
                    check(mine)
                except EngineError:
                    raise
                except Exception as e:  # noqa: BLE001
                    self._fail(ext, f"check of <{kind}:...>", e)

    def mount_api_routes(self, app) -> None:
        """Let each enabled extension add its REST routes to ``app`` (the server's FastAPI app,
        so they sit behind its auth); one that fails is disabled, the others still mount."""
        for extension in self.enabled():
            for add_routes in extension.api_routes:
                self._guard(extension, "api routes", add_routes, app, self.engine)

    def enabled(self) -> list[Extension]:
        return [e for e in self.extensions.values() if e.enabled]
