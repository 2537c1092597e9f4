"""Prompt text -> the UNet's cross-attention context.

Prompts longer than the encoder's 75-token window are encoded in 75-token chunks, each with
its own start/end tokens, and the chunks' outputs concatenated (A1111's way of lifting CLIP's
length limit). A negative prompt with fewer chunks is padded with empty chunks to match.
"""
from __future__ import annotations

import torch

from core.text.tokenizer import ClipTokenizer

CHUNK = 75


def chunk_ids(tokenizer: ClipTokenizer, text: str) -> list[list[int]]:
    ids = tokenizer.encode(text)
    chunks = [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)] or [[]]
    return [tokenizer.pad_ids(chunk) for chunk in chunks]


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer: ClipTokenizer, prompts: list[str], clip_skip: int = 1) -> torch.Tensor:
    """Several prompts -> (len(prompts), 77 * chunks, hidden), all padded to the same chunk count."""
    chunked = [chunk_ids(tokenizer, p) for p in prompts]
    count = max(len(c) for c in chunked)
    empty = tokenizer.pad_ids([])
    for c in chunked:
        c.extend([empty] * (count - len(c)))
    ids = torch.tensor([chunk for c in chunked for chunk in c])
    hidden = text_encoder(ids, clip_skip=clip_skip)
    return hidden.reshape(len(prompts), count * hidden.shape[1], hidden.shape[2])
