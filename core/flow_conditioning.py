"""Prompt -> what SD 3.x and FLUX.1 transformers take: a token context and a pooled vector.

As diffusers' StableDiffusion3Pipeline and FluxPipeline build them (the parity tests compare):

* SD 3.x: CLIP-L and bigG each read their penultimate layer without the final norm
  (77-token chunks with A1111's emphasis, as for SDXL), joined along the features (768 + 1280)
  and zero-padded to T5's width (4096); T5's last layer (``t5_tokens`` tokens, padded) follows
  along the tokens. Without a T5 encoder its place holds as many zero tokens (diffusers 0.42;
  ComfyUI puts 77 there). The pooled vector is
  both CLIPs' projected pooled outputs joined (768 + 1280).
* FLUX.1: T5's last layer is the whole context; CLIP-L gives only its pooled output (768,
  not projected).

T5 sees the prompt's plain text: emphasis brackets are taken out (their weights apply to the
CLIP towers only) and BREAK is dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from core.conditioning import CHUNK, TextConditioner
from core.errors import EngineError
from core.offload import encoder_visits
from core.prompts.parser import parse_attention
from core.sampling.denoiser import Conditioning


@dataclass
class FlowText:
    """One prompt encoded: the CLIP towers' context (SD3; None for FLUX), T5's, the pooled vector."""

    clip: torch.Tensor | None  # (chunks * 77, 2048)
    t5: torch.Tensor  # (t5 tokens, 4096)
    pooled: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        clip_tokens = 0 if self.clip is None else self.clip.shape[0]
        return torch.Size((clip_tokens + self.t5.shape[0], self.t5.shape[1]))


def plain_text(prompt: str) -> str:
    """The prompt without A1111's emphasis syntax: what a T5 encoder reads."""
    return "".join(f.text for f in parse_attention(prompt) if not f.is_break)


class FlowConditioner:
    zero_empty_negative = False  # an empty negative prompt is encoded as text, as diffusers does

    def __init__(self, model, tokenizer, emphasis: str = "Original", check_stop: Callable[[], None] | None = None):
        self.spec = model.spec
        facts = self.spec.family_info.flow
        self.is_flux = model.is_flux
        self.clips = [TextConditioner(model.text_part(name), tokenizer, None, 1, emphasis, check_stop)
                      for name in ("clip_l", "clip_g") if model.text_part(name) is not None]
        self.t5 = model.text_part("t5xxl")
        self.t5_tokenizer = model.t5_tokenizer
        if self.t5 is not None and self.t5_tokenizer is None:
            raise EngineError("this checkpoint has a T5 encoder but no T5 tokenizer was found: put its tokenizer.json "
                              "(or spiece.model) beside the checkpoint or in models/text_encoder")
        self.t5_tokens = facts.t5_tokens
        self.context_dim = self.spec.transformer.context_dim
        self.check_stop = check_stop
        # Offloaded models (core/offload.py) keep their encoders in CPU memory: they visit the
        # device while a prompt is encoded, and what they give is put on the compute device.
        self.visits = encoder_visits(model)
        self.cache: dict[str, FlowText] = {}

    @property
    def text_encoder(self):
        return self.clips[0].text_encoder

    @torch.no_grad()
    def encode_t5(self, text: str) -> torch.Tensor:
        if self.t5 is None:
            return torch.zeros(self.t5_tokens, self.context_dim)
        if self.check_stop is not None:
            self.check_stop()
        ids = self.t5_tokenizer([plain_text(text)], max_length=self.t5_tokens)
        return self.t5.encode(ids)[0]

    def encode(self, text: str) -> FlowText:
        if text not in self.cache:
            with self.visits():
                encoded = [clip.encode_with_pooled(text) for clip in self.clips]
                t5 = self.encode_t5(text)
            pooled = torch.cat([p.to(encoded[0][0].dtype) for _, p in encoded])
            clip = None
            if not self.is_flux:
                clip = torch.cat([z for z, _ in encoded], dim=-1)
            self.cache[text] = FlowText(*map(self.visits.arrived, (clip, t5, pooled)))
        return self.cache[text]

    def zeros_like(self, encoded: FlowText) -> FlowText:
        clip = None if encoded.clip is None else torch.zeros_like(encoded.clip)
        return FlowText(clip, torch.zeros_like(encoded.t5), torch.zeros_like(encoded.pooled))

    def pad_to(self, encoded: FlowText, length: int) -> FlowText:
        """SD3: CLIP contexts of fewer chunks get encoded empty chunks (as SDXL's); T5's part has
        one length for every prompt."""
        missing = (length - encoded.shape[0]) // (CHUNK + 2)
        if missing <= 0 or encoded.clip is None:
            return encoded
        empty = self.encode("").clip[: CHUNK + 2]
        return FlowText(torch.cat([encoded.clip, empty.repeat(missing, 1)]), encoded.t5, encoded.pooled)

    def finish(self, encoded: FlowText, size: tuple[int, int] | None = None, negative: bool = False) -> Conditioning:
        context = encoded.t5
        if encoded.clip is not None:
            # On the CLIP towers' device and dtype: SD3's T5 stand-in zeros are made on the CPU.
            clip = torch.nn.functional.pad(encoded.clip, (0, self.context_dim - encoded.clip.shape[-1]))
            context = torch.cat([clip, context.to(clip)])
        return Conditioning(context, encoded.pooled.to(context))
