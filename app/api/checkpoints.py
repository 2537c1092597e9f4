"""The checkpoints as the API names them: the engine's list with A1111's titles ("name [hash]"),
model names and hashes (from the engine's hash cache only), a client's name for one resolved to
the engine's, the current one, and loading one under the engine's job lock."""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from pathlib import Path
from typing import Any

from app.api.errors import ApiError, engine_error
from app.api.schemas import API_PREFIX
from app.settings import Settings
from core.errors import EngineError

_HASH_SUFFIX = re.compile(r"^(.*?)\s*\[([0-9a-fA-F]{8,64})\]$")


@dataclasses.dataclass
class CheckpointEntry:
    name: str  # as the engine lists it, relative to the checkpoint folder
    path: Path
    sha256: str | None

    @property
    def model_name(self) -> str:
        return os.path.splitext(self.name.replace("/", "_").replace("\\", "_"))[0] if Path(self.name).suffix else \
            self.name.replace("/", "_")

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.short_hash}]" if self.short_hash else self.name


def _cached_sha256(engine, path: Path) -> str | None:
    """The checkpoint's sha256 if the engine's hash cache already has it (never computed here:
    hashing a multi-GB file takes a while; the engine hashes a model when it first uses it)."""
    try:
        from core.hashing import model_file

        target = model_file(path).resolve()
        stat = target.stat()
        entry = engine.hashes.entries.get(str(target))
    except (OSError, ImportError):
        return None
    if isinstance(entry, dict) and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime:
        return entry.get("sha256")
    return None


class Checkpoints:
    """The engine's checkpoints, listed from the folder on every call (nothing is cached)."""

    def __init__(self, engine, settings: Settings):
        self.engine = engine
        self.settings = settings

    def entries(self) -> list[CheckpointEntry]:
        entries = []
        for name in self.engine.list_checkpoints():
            path = self.engine.resolve_checkpoint(name)  # the bundled demo lives outside ckpt_dir
            entries.append(CheckpointEntry(name, path, _cached_sha256(self.engine, path)))
        return entries

    def find(self, wanted: Any, field: str) -> str:
        """A checkpoint as clients name it (title with [hash], file name, model name, stem, hash)
        -> the engine's name for it; 404 naming ``field`` if there is none."""
        if not isinstance(wanted, str) or not wanted.strip():
            raise ApiError(422, f"{field}: give a checkpoint name (GET {API_PREFIX}/sd-models lists them)")
        text = wanted.strip()
        entries = self.entries()
        match = _HASH_SUFFIX.match(text)
        base, digest = (match.group(1), match.group(2).lower()) if match else (text, None)
        for candidate in (text, base):
            for entry in entries:
                if candidate in (entry.name, entry.title, entry.model_name, Path(entry.name).stem,
                                 Path(entry.name).name):
                    return entry.name
        hexes = [h for h in (digest, text.lower()) if h and re.fullmatch(r"[0-9a-f]{8,64}", h)]
        for h in hexes:
            for entry in entries:
                if entry.sha256 and entry.sha256.startswith(h):
                    return entry.name
        known = ", ".join(e.name for e in entries[:20]) or "none; put checkpoints in " + str(self.engine.ckpt_dir)
        raise ApiError(404, f"{field}: checkpoint {text!r} not found (known: {known})"[:500])

    def current(self) -> CheckpointEntry | None:
        """The settings' checkpoint, else the loaded one, else the first (what a job would use)."""
        entries = self.entries()
        chosen = self.settings.get("sd_model_checkpoint")
        if chosen:
            for entry in entries:
                if entry.name == chosen:
                    return entry
        loaded = self.engine.loaded
        if loaded is not None:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.path.resolve() == Path(loaded.path).resolve():
                        return entry
        return entries[0] if entries else None


def load_checkpoint(engine, name: str) -> None:
    """Load ``name`` under the engine's job lock; a failure as a client error."""
    try:
        with engine.exclusive():
            engine.load(name)
    except EngineError as exc:
        raise engine_error(exc) from None
