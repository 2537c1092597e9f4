"""Textual-inversion embeddings from ``models/embeddings``: a word in the prompt equal to a
file's name is replaced by the vectors stored in that file.

Formats: A1111 ``.pt`` (``string_to_param``), ``.safetensors`` (``emb_params``; SDXL files hold
``clip_l``/``clip_g``), diffusers ``.bin`` (one ``{token: vector}`` entry). Pickled files are
read through ``torch.load(weights_only=True)`` only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from core.errors import EngineError
from core.loading import read_tensor_file
from core.modelfiles import is_safetensors, model_files

log = logging.getLogger(__name__)
SUFFIXES = (".pt", ".safetensors", ".bin")


@dataclass
class Embedding:
    name: str
    vectors: torch.Tensor  # (count, hidden)
    path: Path


def read_embedding_vectors(path: Path, key: str = "clip_l") -> torch.Tensor:
    if is_safetensors(path):
        data, _ = read_tensor_file(path)
    else:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure is the file's fault: report it by name
            raise EngineError(f"cannot read embedding ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})", label=path.name) from None
    if not isinstance(data, dict):
        raise EngineError("not an embedding file", label=path.name)
    if isinstance(data.get("string_to_param"), dict):
        tensors = list(data["string_to_param"].values())
    elif "emb_params" in data:
        tensors = [data["emb_params"]]
    elif key in data:
        tensors = [data[key]]
    else:
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(tensors) != 1 or not isinstance(tensors[0], torch.Tensor):
        raise EngineError("not an embedding file (no single vector table found)", label=path.name)
    vectors = tensors[0].detach().float()
    return vectors[None] if vectors.ndim == 1 else vectors


class EmbeddingDatabase:
    """The embeddings usable with one text encoder (those whose width matches its hidden size)."""

    def __init__(self, directory: Path | None, tokenizer, hidden_size: int, key: str = "clip_l"):
        self.by_name: dict[str, Embedding] = {}
        self.skipped: dict[str, str] = {}
        self._by_first_token: dict[int, list[tuple[list[int], Embedding]]] = {}
        if directory is None or not directory.is_dir():
            return
        # Suffixes in any case; files and folders the user linked in are followed.
        for path in sorted(model_files(directory, SUFFIXES)):
            try:
                vectors = read_embedding_vectors(path, key)
            except EngineError as e:
                self.skipped[path.stem] = str(e)
                log.warning("skipping embedding %s", e)
                continue
            if vectors.shape[-1] != hidden_size:
                why = f"{path.name}: vectors are {vectors.shape[-1]} wide, this model's text encoder needs {hidden_size}"
                self.skipped[path.stem] = why
                log.warning("skipping embedding %s", why)
                continue
            self.add(Embedding(path.stem, vectors, path), tokenizer)

    def add(self, embedding: Embedding, tokenizer) -> None:
        self.by_name[embedding.name] = embedding
        ids = tokenizer.encode(embedding.name)
        if ids:
            entries = self._by_first_token.setdefault(ids[0], [])
            entries.append((ids, embedding))
            entries.sort(key=lambda entry: -len(entry[0]))  # longest name first

    def find_at(self, ids: list[int], position: int):
        """-> (embedding, number of prompt tokens its name takes) or None."""
        for name_ids, embedding in self._by_first_token.get(ids[position], ()):
            if ids[position:position + len(name_ids)] == name_ids:
                return embedding, len(name_ids)
        return None
