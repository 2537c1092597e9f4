"""CLIP text encoders, as ``transformers.CLIPTextModel``.

SD 1.x stores its encoder under ``cond_stage_model.transformer.text_model.*``; transformers 5
dropped the ``text_model`` level, so names are mapped at load time (core/loading.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    max_positions: int = 77
    hidden_act: str = "quick_gelu"  # OpenAI CLIP; OpenCLIP towers use "gelu"

    @property
    def num_heads(self) -> int:
        # Every released CLIP text tower uses 64-wide heads; tiny test towers get at least one head.
        return max(1, self.hidden_size // 64)

    def to_hf(self) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            max_position_embeddings=self.max_positions,
            hidden_act=self.hidden_act,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )


class FrozenCLIPEmbedder(nn.Module):
    """Token ids -> per-token hidden states (the UNet's cross-attention context)."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.transformer = CLIPTextModel(config.to_hf())
        self.transformer.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.transformer.embeddings.token_embedding.weight.device

    def forward(self, input_ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
        """clip_skip 1 = last layer; 2 = penultimate (then the final layer norm, as A1111 does)."""
        input_ids = input_ids.to(self.device)
        if clip_skip <= 1:
            return self.transformer(input_ids=input_ids).last_hidden_state
        out = self.transformer(input_ids=input_ids, output_hidden_states=True)
        hidden = out.hidden_states[-clip_skip]
        return self.transformer.final_layer_norm(hidden)
