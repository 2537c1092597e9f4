"""The T5 tokenizer of SD3 / SD 3.5 and FLUX.1, read from files the user has.

No installable package ships T5's 32,000-piece vocabulary, so it comes from the model's own
folder: a ``tokenizer.json`` (the ``tokenizers`` library's format, run by its Rust Unigram model
with the file's own normaliser and Metaspace pre-tokenizer) or, when the ``sentencepiece`` module
is installed, a sentencepiece ``spiece.model``. diffusers folders keep it in ``tokenizer_3/``
(SD3) or ``tokenizer_2/`` (FLUX.1); for single files the caller names the folders to look in
(beside the checkpoint, the text-encoder folder).

Ids are what diffusers' pipelines give (``padding="max_length", truncation=True``): the text's
pieces cut to ``max_length - 1``, then ``</s>``, then ``<pad>`` up to ``max_length``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from core.errors import UNAVAILABLE, EngineError

TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODEL = "spiece.model"
# Where diffusers folders keep the T5 tokenizer: SD3's tokenizer_3, FLUX.1's tokenizer_2 (SDXL's
# tokenizer_2 is a CLIP one: such a folder is looked into, and passed over).
T5_SUBFOLDERS = ("tokenizer_3", "tokenizer_2")
EOS_TOKEN, PAD_TOKEN = "</s>", "<pad>"
# T5's tokenizer.json is 2.4 MB; a file many times larger is not one, and is not read.
MAX_TOKENIZER_BYTES = 64 * 1024 * 1024


def find_t5_tokenizer(candidate_folders: Iterable[str | Path]) -> Path | None:
    """The first T5 tokenizer file in the folders, in the order given (each folder itself, then
    its tokenizer_3/ and tokenizer_2/); in one place tokenizer.json before spiece.model. A
    tokenizer.json counts only when it holds a Unigram model with ``</s>`` (a CLIP one does not);
    an spiece.model is taken by its name (reading it needs sentencepiece)."""
    for folder in candidate_folders:
        folder = Path(folder)
        for place in (folder, *(folder / name for name in T5_SUBFOLDERS)):
            if (place / TOKENIZER_JSON).is_file() and _is_t5_tokenizer_json(place / TOKENIZER_JSON):
                return place / TOKENIZER_JSON
            if (place / SENTENCEPIECE_MODEL).is_file():
                return place / SENTENCEPIECE_MODEL
    return None


def _is_t5_tokenizer_json(path: Path) -> bool:
    try:
        tokenizer = _read_tokenizer_json(path)
    except EngineError:
        return False
    return type(tokenizer.model).__name__ == "Unigram" and tokenizer.token_to_id(EOS_TOKEN) is not None


def _read_tokenizer_json(path: Path):
    from tokenizers import Tokenizer

    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise EngineError(f"{path.name} is {path.stat().st_size:,} bytes, too large for a tokenizer", label=str(path))
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust library raises a bare Exception for malformed files
        raise EngineError(f"{path.name} is not a tokenizers file: {str(e)[:200]}", label=str(path)) from None


class T5Tokenizer:
    """Texts -> (B, max_length) token ids for the T5 encoder, and token counts for the prompt box."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.name.endswith(".json"):
            self._tokenizer = _read_tokenizer_json(self.path)
            self._pieces = self._json_pieces
            ids = {token: self._tokenizer.token_to_id(token) for token in (EOS_TOKEN, PAD_TOKEN)}
        else:
            self._tokenizer = _read_sentencepiece(self.path)
            self._pieces = self._sentencepiece_pieces
            ids = {EOS_TOKEN: self._tokenizer.eos_id(), PAD_TOKEN: self._tokenizer.pad_id()}
        missing = [token for token, id_ in ids.items() if id_ is None or id_ < 0]
        if missing:
            raise EngineError(f"{self.path.name} is not a T5 tokenizer: it has no {missing[0]} token", label=str(self.path))
        self.eos_id, self.pad_id = ids[EOS_TOKEN], ids[PAD_TOKEN]

    def _json_pieces(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def _sentencepiece_pieces(self, texts: list[str]) -> list[list[int]]:
        return self._tokenizer.encode(texts, out_type=int)

    def tokenize(self, text: str) -> list[int]:
        """The text's piece ids, without ``</s>`` or padding."""
        return self._pieces([text])[0]

    def count_tokens(self, text: str) -> int:
        """How many pieces the text takes; it fits ``max_length`` ids when this is at most ``max_length - 1``
        (the last place holds ``</s>``)."""
        return len(self.tokenize(text))

    def __call__(self, texts: str | Sequence[str], max_length: int = 256) -> torch.Tensor:
        """(B, max_length) int64 ids: each text's pieces cut to ``max_length - 1``, ``</s>``, then padding."""
        if max_length < 1:
            raise EngineError(f"max_length must be at least 1 (room for {EOS_TOKEN}), not {max_length}")
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.full((len(texts), max_length), self.pad_id, dtype=torch.long)
        for row, pieces in enumerate(self._pieces(texts)):
            kept = pieces[:max_length - 1] + [self.eos_id]
            ids[row, :len(kept)] = torch.tensor(kept, dtype=torch.long)
        return ids


def _read_sentencepiece(path: Path):
    try:
        import sentencepiece
    except ImportError:
        raise EngineError(
            f"reading the T5 tokenizer {path.name} needs the 'sentencepiece' module, which is not installed; "
            f"a {TOKENIZER_JSON} (the same tokenizer in the tokenizers format, as diffusers folders ship it) "
            "in the same folder works without it",
            kind=UNAVAILABLE, label=str(path),
        ) from None
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise EngineError(f"{path.name} is {path.stat().st_size:,} bytes, too large for a tokenizer", label=str(path))
    return sentencepiece.SentencePieceProcessor(model_file=str(path))
