"""File hashes as A1111 prints them ("Model hash": the first 10 hex digits of the sha256)."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

_lock = threading.Lock()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_file(path: Path) -> Path:
    """The file whose hash names a model: the file itself, or a diffusers folder's denoising
    network weights (unet/, or transformer/ for SD 3.x and FLUX.1; of a sharded one, the first
    shard)."""
    if path.is_dir():
        for part in ("unet", "transformer"):
            for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
                if (path / part / name).is_file():
                    return path / part / name
            shards = sorted((path / part).glob("diffusion_pytorch_model-*.safetensors"))
            if shards:
                return shards[0]
    return path


class HashCache:
    """sha256 of big files, remembered by (path, size, mtime) in a JSON file written atomically."""

    def __init__(self, cache_file: Path | None):
        self.cache_file = cache_file
        self.entries: dict[str, dict] = {}
        if cache_file and cache_file.is_file():
            try:
                self.entries = json.loads(cache_file.read_text())
            except (OSError, json.JSONDecodeError):
                self.entries = {}

    def sha256(self, path: str | os.PathLike) -> str:
        path = model_file(Path(path)).resolve()
        stat = path.stat()
        key = str(path)
        with _lock:
            entry = self.entries.get(key)
            if entry and entry.get("size") == stat.st_size and entry.get("mtime") == stat.st_mtime:
                return entry["sha256"]
        digest = sha256_file(path)
        with _lock:
            self.entries[key] = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": digest}
            self._save()
        return digest

    def short(self, path: str | os.PathLike) -> str:
        return self.sha256(path)[:10]

    def _save(self) -> None:
        if not self.cache_file:
            return
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_file.parent, prefix=".hashes-")
        with os.fdopen(fd, "w") as f:
            json.dump(self.entries, f, indent=1)
        os.replace(tmp, self.cache_file)
