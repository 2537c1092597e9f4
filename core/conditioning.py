"""Prompt text -> the UNet's cross-attention context, as AUTOMATIC1111 computes it.

* Emphasis: each token carries the weight its brackets gave it (core/prompts); after
  encoding, hidden states are multiplied by their token's weight. "Original" (A1111's
  default) then rescales the chunk back to its original mean; "No norm" skips that; "None"
  ignores weights.
* Length: text is cut into 75-token chunks, each wrapped in start/end tokens, encoded on its own
  and concatenated. A chunk that fills up within 20 tokens of a comma is cut after the comma
  instead, and ``BREAK`` starts a new chunk. Prompts with fewer chunks than others in the same
  batch are padded with encoded empty chunks.
* Textual-inversion embeddings: a word equal to an embedding's name is replaced by its vectors.
* Padding: chunks are filled with the end-of-text token; for OpenCLIP encoders (SD 2.x, SDXL's
  second encoder) everything after the first end-of-text token becomes id 0 (A1111's rule).
* SDXL (``SDXLConditioner``): each encoder tokenizes, weights and normalises on its own, as
  A1111 runs one "custom words" embedder per encoder; the two contexts are concatenated (768 +
  1280 = 2048) and the pooled vector comes from the OpenCLIP encoder's first chunk, unweighted.
  The UNet's added vector is that pooled vector followed by Fourier features of the original
  size, crop corner and target size (refiner: original size, crop, aesthetic score). An empty
  negative prompt is all zeros (context and pooled), as A1111 and sgm do. Clip skip does not
  apply (A1111 ignores it for SD 2.x and SDXL too). Textual-inversion files need both
  ``clip_l`` and ``clip_g`` vectors (only ``clip_g`` for the refiner).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch

from core.models.clip import OPENCLIP
from core.models.unet import timestep_embedding
from core.prompts.parser import parse_attention
from core.sampling.denoiser import Conditioning
from core.text.tokenizer import ClipTokenizer

CHUNK = 75
COMMA_BACKTRACK = 20
# Chunks per text-encoder call. A long prompt is encoded a group at a time, with the job's stop
# check between groups, so that an interrupt does not wait for hundreds of chunks.
ENCODE_GROUP = 8
EMPHASIS_MODES = ("Original", "No norm", "None")
MAX_COUNTED_TEXTS = 64  # prompt_token_count: distinct scheduled texts counted, at most


@dataclass
class PromptChunk:
    tokens: list[int] = field(default_factory=list)  # without start/end tokens while being filled
    weights: list[float] = field(default_factory=list)
    # (position in the chunk after the start token, embedding vectors) to splice in
    fixes: list[tuple[int, torch.Tensor]] = field(default_factory=list)
    filled: int = 0  # prompt tokens in it before padding (A1111's token counter counts them)


def tokenize_prompt(tokenizer: ClipTokenizer, text: str, embeddings=None) -> list[PromptChunk]:
    """A1111's chunking, comma backtracking, BREAK and embedding placement."""
    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    last_comma = -1

    def close_chunk():
        nonlocal chunk, last_comma
        pad = max(0, CHUNK - len(chunk.tokens))
        chunk.filled = len(chunk.tokens)
        chunk.tokens = [tokenizer.bos_id, *chunk.tokens, *([tokenizer.eos_id] * pad), tokenizer.eos_id]
        chunk.weights = [1.0, *chunk.weights, *([1.0] * pad), 1.0]
        chunks.append(chunk)
        chunk = PromptChunk()
        last_comma = -1

    for fragment in parse_attention(text):
        if fragment.text == "BREAK" and fragment.weight == -1:
            close_chunk()
            continue
        ids = tokenizer.encode(fragment.text)
        position = 0
        while position < len(ids):
            token = ids[position]
            if token == tokenizer.comma_id:
                last_comma = len(chunk.tokens)
            elif len(chunk.tokens) == CHUNK and last_comma != -1 and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                moved_tokens, moved_weights = chunk.tokens[cut:], chunk.weights[cut:]
                chunk.tokens, chunk.weights = chunk.tokens[:cut], chunk.weights[:cut]
                close_chunk()
                chunk.tokens, chunk.weights = moved_tokens, moved_weights
            if len(chunk.tokens) == CHUNK:
                close_chunk()
            found = embeddings.find_at(ids, position) if embeddings is not None else None
            if found is None:
                chunk.tokens.append(token)
                chunk.weights.append(fragment.weight)
                position += 1
                continue
            embedding, name_length = found
            count = embedding.vectors.shape[0]
            if len(chunk.tokens) + count > CHUNK:
                close_chunk()
            chunk.fixes.append((len(chunk.tokens) + 1, embedding.vectors))
            chunk.tokens += [0] * count
            chunk.weights += [fragment.weight] * count
            position += name_length
    if chunk.tokens or not chunks:
        close_chunk()
    return chunks


def chunk_token_count(chunks: list[PromptChunk]) -> int:
    """A1111's count of a tokenized prompt: every chunk but the last counts whole (75, however a
    BREAK or a comma cut it short), the last its own tokens."""
    return CHUNK * (len(chunks) - 1) + chunks[-1].filled


def prompt_token_count(tokenizer: ClipTokenizer, prompt: str, steps: int = 20, embeddings=None) -> tuple[int, int]:
    """(tokens, limit) as A1111's token counter shows them ("80/150"): the prompt's
    extra-network tags removed, split at AND, each prompt-editing step's text tokenized as
    the encoder does (emphasis brackets are not tokens, BREAK fills its chunk, an embedding
    counts its vectors); the largest count wins, and the limit is the chunks it fills x 75."""
    from core.prompts.parser import extract_extra_networks, get_schedules, split_and

    text, _ = extract_extra_networks(prompt)
    schedules = get_schedules([part.text for part in split_and(text)], max(1, steps))
    # An alternation [a|b] gives a text per step: the first MAX_COUNTED_TEXTS bound the work.
    texts = list(dict.fromkeys(entry.text for schedule in schedules for entry in schedule))[:MAX_COUNTED_TEXTS]
    tokens = max(chunk_token_count(tokenize_prompt(tokenizer, t, embeddings)) for t in texts)
    return tokens, -(-max(tokens, 1) // CHUNK) * CHUNK


class TextConditioner:
    """Encodes prompts for one text encoder, with a cache (the same prompt is often encoded
    for every batch and every step of a schedule)."""

    def __init__(self, text_encoder, tokenizer: ClipTokenizer, embeddings=None, clip_skip: int = 1, emphasis: str = "Original",
                 check_stop: Callable[[], None] | None = None):
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.embeddings = embeddings
        self.clip_skip = clip_skip
        self.emphasis = emphasis
        # Called between groups of chunks; raises (the job's interruption) to end the encoding.
        self.check_stop = check_stop
        config = getattr(text_encoder, "config", None)
        # The encoder's convention wins over the tokenizer's: OpenCLIP towers pad with 0.
        self.pad_id = tokenizer.eos_id if getattr(config, "pad_with_eos", True) else 0
        # Encoded prompts by text; the engine shares one between jobs (EncodedPromptCache).
        self.cache: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def chunk_ids(self, chunk: PromptChunk) -> list[int]:
        tokens = list(chunk.tokens)
        if self.pad_id != self.tokenizer.eos_id and self.tokenizer.eos_id in tokens:
            end = tokens.index(self.tokenizer.eos_id)
            tokens[end + 1:] = [self.pad_id] * (len(tokens) - end - 1)
        return tokens

    @torch.no_grad()
    def encode_chunks_with_pooled(self, chunks: list[PromptChunk]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> ((chunks * 77, hidden), the first chunk's pooled vector or None)."""
        weights = torch.tensor([c.weights for c in chunks])
        parts, pooled = [], None
        for start in range(0, len(chunks), ENCODE_GROUP):
            if self.check_stop is not None:
                self.check_stop()
            z, group_pooled = self._encode_group(chunks[start:start + ENCODE_GROUP])
            parts.append(z)
            if pooled is None:
                pooled = group_pooled
        z = torch.cat(parts)
        if self.emphasis != "None":
            original_mean = z.mean()
            z = z * weights.to(z.device)[..., None]
            if self.emphasis == "Original":
                z = z * (original_mean / z.mean())
        return z.reshape(-1, z.shape[-1]), (pooled[0].to(z.dtype) if pooled is not None else None)

    def _encode_group(self, chunks: list[PromptChunk]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One text-encoder call: (chunks, 77, hidden) in float32 (float64 stays), pooled or None."""
        ids = torch.tensor([self.chunk_ids(c) for c in chunks])
        hook = None
        if any(c.fixes for c in chunks):
            def splice(module, inputs, output):
                output = output.clone()
                for row, c in enumerate(chunks):
                    for offset, vectors in c.fixes:
                        count = min(vectors.shape[0], output.shape[1] - offset)
                        output[row, offset:offset + count] = vectors[:count].to(output.device, output.dtype)
                return output
            hook = self.text_encoder.transformer.embeddings.token_embedding.register_forward_hook(splice)
        try:
            if hasattr(self.text_encoder, "encode_with_pooled"):
                z, pooled = self.text_encoder.encode_with_pooled(ids, clip_skip=self.clip_skip)
            else:
                z, pooled = self.text_encoder(ids, clip_skip=self.clip_skip), None
        finally:
            if hook is not None:
                hook.remove()
        # float32 for every model; float64 stays (the parity tests' double-precision runs).
        precision = torch.float64 if z.dtype == torch.float64 else torch.float32
        return z.to(precision), pooled

    def encode_chunks(self, chunks: list[PromptChunk]) -> torch.Tensor:
        return self.encode_chunks_with_pooled(chunks)[0]

    def encode_with_pooled(self, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if text not in self.cache:
            self.cache[text] = self.encode_chunks_with_pooled(tokenize_prompt(self.tokenizer, text, self.embeddings))
        return self.cache[text]

    def encode(self, text: str) -> torch.Tensor:
        return self.encode_with_pooled(text)[0]

    def empty_chunk(self) -> torch.Tensor:
        return self.encode("")[: CHUNK + 2]

    def pad_to(self, context: torch.Tensor, length: int) -> torch.Tensor:
        """Pad with encoded empty chunks to ``length`` tokens (a multiple of 77)."""
        missing = (length - context.shape[0]) // (CHUNK + 2)
        if missing <= 0:
            return context
        return torch.cat([context, self.empty_chunk().repeat(missing, 1)])

    def encode_batch(self, texts: list[str]) -> torch.Tensor:
        """Several prompts -> (len(texts), tokens, hidden), padded to a common length."""
        encoded = [self.encode(t) for t in texts]
        length = max(e.shape[0] for e in encoded)
        return torch.stack([self.pad_to(e, length) for e in encoded])


@dataclass
class PooledText:
    """One prompt encoded for SDXL: the concatenated context and the pooled OpenCLIP vector."""

    context: torch.Tensor  # (tokens, 2048)
    pooled: torch.Tensor  # (1280,)

    @property
    def shape(self) -> torch.Size:
        return self.context.shape


def embeddings_for_encoders(embeddings, tokenizer: ClipTokenizer, encoders, keys: list[str]) -> list:
    """One embedding database per text encoder, holding only the embeddings that have vectors
    for every encoder (SDXL files: ``clip_l`` and ``clip_g``) with the same vector count."""
    from core.embeddings import Embedding, EmbeddingDatabase, read_embedding_vectors
    from core.errors import EngineError

    sides = [EmbeddingDatabase(None, tokenizer, encoder.config.hidden_size) for encoder in encoders]
    if embeddings is None:
        return sides
    for embedding in embeddings.by_name.values():
        found = []
        for encoder, key in zip(encoders, keys):
            width = encoder.config.hidden_size
            vectors = embedding.vectors
            if vectors.shape[-1] != width or len(encoders) > 1:
                try:
                    vectors = read_embedding_vectors(embedding.path, key)
                except EngineError:
                    vectors = None
            if vectors is None or vectors.shape[-1] != width:
                break
            found.append(vectors)
        if len(found) == len(encoders) and len({v.shape[0] for v in found}) == 1:
            for side, vectors in zip(sides, found):
                side.add(Embedding(embedding.name, vectors, embedding.path), tokenizer)
    return sides


class SDXLConditioner:
    """SDXL base (CLIP-L + OpenCLIP bigG) and refiner (bigG only): contexts, pooled vector and
    the size/crop/aesthetic conditioning of the UNet's added embedding."""

    zero_empty_negative = True  # an empty negative prompt is zeros, context and pooled

    def __init__(self, model, tokenizer: ClipTokenizer, embeddings=None, emphasis: str = "Original",
                 crop: tuple[int, int] = (0, 0), aesthetic_score: float = 6.0, negative_aesthetic_score: float = 2.5,
                 check_stop: Callable[[], None] | None = None):
        self.spec = model.spec
        encoders = model.text_encoders
        keys = ["clip_g" if e.config.layout == OPENCLIP else "clip_l" for e in encoders]
        sides = embeddings_for_encoders(embeddings, tokenizer, encoders, keys)
        self.parts = [TextConditioner(e, tokenizer, db, 1, emphasis, check_stop) for e, db in zip(encoders, sides)]
        self.pooled_part = next(i for i, e in enumerate(encoders) if e.has_pooled)
        self.refiner = self.spec.family_info.refiner
        self.crop = crop  # (top, left), A1111's sdxl_crop_top / sdxl_crop_left
        self.aesthetic_score = aesthetic_score  # refiner; A1111's defaults 6.0 and 2.5
        self.negative_aesthetic_score = negative_aesthetic_score
        # Encoded prompts by text (both encoders'); the engine shares one between jobs.
        self.cache: dict[str, PooledText] = {}

    @property
    def text_encoder(self):
        return self.parts[0].text_encoder

    def encode(self, text: str) -> PooledText:
        if text not in self.cache:
            encoded = [part.encode_with_pooled(text) for part in self.parts]
            context = torch.cat([z for z, _ in encoded], dim=-1)
            self.cache[text] = PooledText(context, encoded[self.pooled_part][1])
        return self.cache[text]

    def zeros_like(self, encoded: PooledText) -> PooledText:
        return PooledText(torch.zeros_like(encoded.context), torch.zeros_like(encoded.pooled))

    def pad_to(self, encoded: PooledText, length: int) -> PooledText:
        missing = (length - encoded.context.shape[0]) // (CHUNK + 2)
        if missing <= 0:
            return encoded
        empty = self.encode("").context[: CHUNK + 2]
        return PooledText(torch.cat([encoded.context, empty.repeat(missing, 1)]), encoded.pooled)

    def size_vector(self, size: tuple[int, int], negative: bool = False) -> torch.Tensor:
        """The numbers after the pooled vector, each as ``size_embed_dim`` Fourier features:
        base (original h, w, crop top, left, target h, w); refiner (original h, w, crop top,
        left, aesthetic score). Original and target size are the picture's size, as A1111."""
        height, width = size
        if self.refiner:
            score = self.negative_aesthetic_score if negative else self.aesthetic_score
            numbers = [height, width, *self.crop, score]
        else:
            numbers = [height, width, *self.crop, height, width]
        return timestep_embedding(torch.tensor(numbers, dtype=torch.float32), self.spec.size_embed_dim).reshape(-1)

    def finish(self, encoded: PooledText, size: tuple[int, int] | None = None, negative: bool = False) -> Conditioning:
        size = size or (self.spec.default_size, self.spec.default_size)
        numbers = self.size_vector(size, negative).to(encoded.pooled.device, encoded.pooled.dtype)
        vector = torch.cat([encoded.pooled, numbers])
        return Conditioning(encoded.context, vector)


def make_conditioner(model, tokenizer: ClipTokenizer, embeddings=None, clip_skip: int = 1, emphasis: str = "Original",
                     check_stop: Callable[[], None] | None = None, cache: dict | None = None):
    """The prompt encoder a model needs, as its family says (core/models/families.py):
    ``TextConditioner`` for one text encoder (SD 1.x/2.x, x4 upscaler), ``SDXLConditioner``
    for SDXL base and refiner. ``check_stop`` is called between groups of chunks and may raise
    to end the encoding (a job's interrupt). ``cache``: encoded prompts by text to use and fill
    (EncodedPromptCache.entries_for), instead of a cache of this conditioner's own."""
    conditioner = model.spec.family_info.conditioner(model, tokenizer, embeddings, clip_skip, emphasis, check_stop)
    if cache is not None:
        conditioner.cache = cache
    return conditioner


def text_weights_signature(model) -> tuple:
    """Where each text-encoder weight lives and how often it was changed in place: a merged LoRA
    either swaps a weight for a new tensor (another address) or writes into it (a new version)."""
    return tuple((p.data_ptr(), p._version) for encoder in model.encoder_modules for p in encoder.parameters())


class EncodedPromptCache:
    """Encoded prompts kept from job to job: a batch count of N, or the same prompt generated
    again, encodes each text once. The entries hold only while everything else that shapes an
    encoding is unchanged: the model object, its text-encoder weights (LoRA merges), its
    embeddings, clip skip, emphasis and the job's extra-network tags; any change starts afresh.
    At most ``limit`` texts are kept (the oldest go first)."""

    def __init__(self, limit: int = 32):
        self.limit = limit
        self._model = None  # weakref: the cache must not keep an unloaded model alive
        self._state: tuple | None = None
        self._entries: dict = {}
        self._embeddings = None

    def entries_for(self, model, embeddings, clip_skip: int, emphasis: str, extra_networks=()) -> dict:
        """The encoded prompts valid for a job with these settings (empty after any change)."""
        vectors = tuple((name, id(e.vectors)) for name, e in sorted(embeddings.by_name.items())) if embeddings is not None else ()
        state = (id(embeddings), vectors, clip_skip, emphasis, repr(list(extra_networks)), text_weights_signature(model))
        same_model = self._model is not None and self._model() is model
        if not same_model or state != self._state:
            self._model, self._state, self._entries = weakref.ref(model), state, BoundedDict(self.limit)
            # Holding the embeddings keeps their ids (and their vectors') from being reused while
            # they are in the key.
            self._embeddings = embeddings
        return self._entries


class BoundedDict(dict):
    """A dict that forgets its oldest entries beyond ``limit``."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        while len(self) > self.limit:
            del self[next(iter(self))]
