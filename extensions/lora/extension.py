"""LoRA / LyCORIS / PEFT networks from ``<lora:name:weight>`` prompt tags (built in).

Every job the engine hands over its ``<lora:...>`` tags (maybe none); the manager merges exactly
those into the loaded model, or restores it bit for bit when none are left. Problems (a missing
name, a file for another model family, keys that match no layer) are warnings: the image is
still made, and the warnings are logged and added to each result's notes.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _package():
    """This folder as a package: ``extensions.lora`` when it is the repository's own copy (so
    the UI and this extension share modules), else loaded from its path under a private name."""
    try:
        package = importlib.import_module("extensions.lora")
        if Path(package.__file__).resolve().parent == HERE:
            return package
    except ImportError:
        pass
    name = f"sd_extension_lora_pkg_{abs(hash(str(HERE)))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "__init__.py", submodule_search_locations=[str(HERE)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return package


def setup(api):
    manager = _package().LoraManager()

    def on_lora(job, tags):
        folder = Path(getattr(job.engine, "lora_dir", None) or Path(getattr(job.engine, "models_dir", HERE.parent.parent / "models")) / "Lora")
        activation = manager.activate(job.model, folder, tags)
        job.notes.extend(activation.warnings)  # the engine shows them with every result
        return activation.fields or None

    api.on_extra_network("lora", on_lora, check=_package().merge.check_tags)
    api.on("before_model_load", lambda path: manager.forget_model())
    api.on("model_unloaded", lambda loaded: manager.forget_model())
