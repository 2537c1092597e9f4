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
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from core.prompts.parser import parse_attention
from core.text.tokenizer import ClipTokenizer

CHUNK = 75
COMMA_BACKTRACK = 20
EMPHASIS_MODES = ("Original", "No norm", "None")


@dataclass
class PromptChunk:
    tokens: list[int] = field(default_factory=list)  # without start/end tokens while being filled
    weights: list[float] = field(default_factory=list)
    # (position in the chunk after the start token, embedding vectors) to splice in
    fixes: list[tuple[int, torch.Tensor]] = field(default_factory=list)


def tokenize_prompt(tokenizer: ClipTokenizer, text: str, embeddings=None) -> list[PromptChunk]:
    """A1111's chunking, comma backtracking, BREAK and embedding placement."""
    chunks: list[PromptChunk] = []
    chunk = PromptChunk()
    last_comma = -1

    def close_chunk():
        nonlocal chunk, last_comma
        pad = max(0, CHUNK - len(chunk.tokens))
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


class TextConditioner:
    """Encodes prompts for one text encoder, with a cache (the same prompt is often encoded
    for every batch and every step of a schedule)."""

    def __init__(self, text_encoder, tokenizer: ClipTokenizer, embeddings=None, clip_skip: int = 1, emphasis: str = "Original"):
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.embeddings = embeddings
        self.clip_skip = clip_skip
        self.emphasis = emphasis
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode_chunks(self, chunks: list[PromptChunk]) -> torch.Tensor:
        """-> (chunks * 77, hidden)."""
        ids = torch.tensor([c.tokens for c in chunks])
        weights = torch.tensor([c.weights for c in chunks])
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
            z = self.text_encoder(ids, clip_skip=self.clip_skip).float()
        finally:
            if hook is not None:
                hook.remove()
        if self.emphasis != "None":
            original_mean = z.mean()
            z = z * weights.to(z.device)[..., None]
            if self.emphasis == "Original":
                z = z * (original_mean / z.mean())
        return z.reshape(-1, z.shape[-1])

    def encode(self, text: str) -> torch.Tensor:
        if text not in self._cache:
            self._cache[text] = self.encode_chunks(tokenize_prompt(self.tokenizer, text, self.embeddings))
        return self._cache[text]

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
