"""Text encoders, all run as ``transformers.CLIPTextModel``.

Two checkpoint layouts hold the same network:

* OpenAI CLIP (SD 1.x, SDXL's first encoder) as transformers saved it:
  ``<prefix>transformer.text_model.*``. transformers 5 dropped the ``text_model`` level, so
  names are mapped at load time (core/loading.py).
* OpenCLIP text towers (SD 2.x ViT-H, SDXL's ViT-bigG) as open_clip saved them:
  ``<prefix>model.*`` with fused attention in-projections (q, k, v rows stacked), a bare
  ``positional_embedding``, ``ln_final``, ``text_projection`` (applied as ``x @ P``) and
  ``logit_scale``. They are converted at load into a CLIPTextModel (exact GELU, heads of 64)
  and converted back by ``to_checkpoint`` so that saving gives the file's own keys.

Which hidden state becomes the cross-attention context differs by model and is data, not code
(``TextEncoderConfig.skip_last`` / ``final_norm`` / ``honour_clip_skip``):

| model | context | clip skip |
| --- | --- | --- |
| SD 1.x | last layer, final layer norm | honoured (A1111) |
| SD 2.x | penultimate layer, then ``ln_final`` (ldm's "penultimate") | ignored, as A1111 |
| SDXL, both encoders | penultimate layer, no final norm (sgm ``legacy=False``) | ignored, as A1111 |

SDXL's OpenCLIP encoder also gives the pooled vector: ``ln_final`` of the last layer at the
end-of-text token (the highest id, as open_clip's ``argmax``), times ``text_projection``.

SD 3.x and FLUX.1 store both CLIPs in transformers' layout (``text_encoders.clip_l.transformer.
text_model.*``, bigG included) with an optional ``transformer.text_projection.weight`` (a Linear,
``CLIPTextModelWithProjection``): ``PooledCLIPEmbedder`` gives SD3 the projected pooled vector
and FLUX the plain one (its config has no projection_dim then).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

CLIP = "clip"  # OpenAI layout: <prefix>transformer.text_model.*
OPENCLIP = "openclip"  # open_clip layout: <prefix>model.*


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    max_positions: int = 77
    hidden_act: str = "quick_gelu"  # OpenAI CLIP; OpenCLIP towers use "gelu"
    layout: str = CLIP
    projection_dim: int | None = None  # OpenCLIP text_projection [hidden, projection_dim]
    has_logit_scale: bool = False
    # How the context is read: the output of layer (num_layers - skip_last), then the final
    # layer norm when final_norm. honour_clip_skip: the user's clip skip moves further back.
    skip_last: int = 0
    final_norm: bool = True
    honour_clip_skip: bool = True
    pad_with_eos: bool = True  # OpenCLIP pads with id 0 after the end-of-text token

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
            projection_dim=self.projection_dim or self.hidden_size,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407 if self.pad_with_eos else 0,
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

    @property
    def has_pooled(self) -> bool:
        return False

    def _hidden(self, input_ids: torch.Tensor, clip_skip: int):
        c = self.config
        back = c.skip_last + (max(clip_skip, 1) - 1 if c.honour_clip_skip else 0)
        if back == 0 and c.final_norm and not self.has_pooled:
            return self.transformer(input_ids=input_ids).last_hidden_state, None
        out = self.transformer(input_ids=input_ids, output_hidden_states=True)
        hidden = out.hidden_states[-1 - back]
        if c.final_norm:
            hidden = out.last_hidden_state if back == 0 else self.transformer.final_layer_norm(hidden)
        return hidden, out

    def forward(self, input_ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
        """clip_skip 1 = the model's own layer; 2 = one further back (SD 1.x only, as A1111)."""
        return self._hidden(input_ids.to(self.device), clip_skip)[0]

    def encode_with_pooled(self, input_ids: torch.Tensor, clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.forward(input_ids, clip_skip), None

    # --- checkpoint names ------------------------------------------------------------
    @staticmethod
    def from_checkpoint(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keys relative to the embedder (``transformer.text_model.X``) -> our ``transformer.X``."""
        out = {}
        for key, value in tensors.items():
            if key.endswith("position_ids"):
                continue
            if key.startswith("transformer.text_model."):
                out["transformer." + key[len("transformer.text_model."):]] = value
            elif key.startswith("transformer."):  # old merges without the text_model level
                out[key] = value
        return out

    @classmethod
    def internal_names(cls, key: str) -> list[tuple[str, int | None]]:
        """One checkpoint key (relative to the embedder) -> our parameter name(s) for it. For a
        fused OpenCLIP in-projection: (q, 0), (k, 1), (v, 2), the third of the checkpoint
        tensor's rows each one holds; else (name, None). For code that patches weights by
        checkpoint name (LoRA); [] for keys that are not weights."""
        out = cls.from_checkpoint({key: _Thirds()})
        return [(name, value.third if isinstance(value, _Third) else None) for name, value in out.items()]

    @staticmethod
    def to_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "transformer.text_model." + k[len("transformer."):]: v
            for k, v in state.items() if k.startswith("transformer.") and not k.endswith("position_ids")
        }


# open_clip resblock part -> CLIPEncoderLayer part (after "encoder.layers.N.")
_OPENCLIP_LAYER = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_HF_LAYER = {v: k for k, v in _OPENCLIP_LAYER.items()}
_OPENCLIP_TOP = {
    "token_embedding.weight": "transformer.embeddings.token_embedding.weight",
    "positional_embedding": "transformer.embeddings.position_embedding.weight",
    "ln_final.weight": "transformer.final_layer_norm.weight",
    "ln_final.bias": "transformer.final_layer_norm.bias",
    "text_projection": "text_projection",
    "logit_scale": "logit_scale",
}
_HF_TOP = {v: k for k, v in _OPENCLIP_TOP.items()}


class FrozenOpenCLIPEmbedder(FrozenCLIPEmbedder):
    """An OpenCLIP text tower (ViT-H/14, ViT-bigG/14) as a CLIPTextModel, plus the projection
    parameters the file carries (``text_projection`` also gives SDXL's pooled vector)."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__(config)
        if config.projection_dim is not None:
            self.text_projection = nn.Parameter(torch.empty(config.hidden_size, config.projection_dim), requires_grad=False)
        if config.has_logit_scale:
            self.logit_scale = nn.Parameter(torch.empty(()), requires_grad=False)

    @property
    def has_pooled(self) -> bool:
        return self.config.projection_dim is not None

    def encode_with_pooled(self, input_ids: torch.Tensor, clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_ids = input_ids.to(self.device)
        hidden, out = self._hidden(input_ids, clip_skip)
        if not self.has_pooled:
            return hidden, None
        final = out.last_hidden_state  # ln_final of the last layer
        # The end-of-text token has the highest id; padding is 0 (open_clip's text.argmax(-1)).
        eot = input_ids.argmax(dim=-1)
        pooled = final[torch.arange(final.shape[0], device=final.device), eot] @ self.text_projection.to(final.dtype)
        return hidden, pooled

    # --- checkpoint names ------------------------------------------------------------
    @staticmethod
    def from_checkpoint(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keys relative to the embedder (``model.X``) -> ours. The fused in-projection is split
        into views (no copy) of its q, k and v rows."""
        out = {}
        for key, value in tensors.items():
            if not key.startswith("model."):
                continue
            key = key[len("model."):]
            if key in _OPENCLIP_TOP:
                out[_OPENCLIP_TOP[key]] = value
                continue
            m = re.match(r"transformer\.resblocks\.(\d+)\.(.+)\.(weight|bias)$", key)
            if not m:
                continue  # attn_mask, stray position_ids: not weights
            layer, part, kind = m.groups()
            base = f"transformer.encoder.layers.{layer}."
            if part in _OPENCLIP_LAYER:
                out[base + f"{_OPENCLIP_LAYER[part]}.{kind}"] = value
        for key, value in tensors.items():
            m = re.match(r"model\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)$", key)
            if m:
                layer, kind = m.groups()
                width = value.shape[0] // 3
                for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                    out[f"transformer.encoder.layers.{layer}.self_attn.{name}.{kind}"] = value[i * width:(i + 1) * width]
        return out

    @staticmethod
    def to_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Ours -> ``model.X``, q/k/v fused back into ``in_proj_weight``/``in_proj_bias``."""
        out = {}
        layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"transformer\.encoder\.layers\.(\d+)\.", k))})
        for key in ("transformer.embeddings.token_embedding.weight", "transformer.embeddings.position_embedding.weight"):
            if key in state:
                out["model." + _HF_TOP[key]] = state[key]
        for layer in layers:
            base = f"transformer.encoder.layers.{layer}."
            target = f"model.transformer.resblocks.{layer}."
            for kind in ("weight", "bias"):
                qkv = [state[base + f"self_attn.{n}.{kind}"] for n in ("q_proj", "k_proj", "v_proj")]
                out[target + f"attn.in_proj_{kind}"] = torch.cat(qkv)
            for hf_part, oc_part in _HF_LAYER.items():
                for kind in ("weight", "bias"):
                    out[target + f"{oc_part}.{kind}"] = state[base + f"{hf_part}.{kind}"]
        for key in ("transformer.final_layer_norm.weight", "transformer.final_layer_norm.bias", "text_projection", "logit_scale"):
            if key in state:
                out["model." + _HF_TOP[key]] = state[key]
        return out


class _Third:
    def __init__(self, third: int):
        self.third = third


class _Thirds:
    """Stands in for a 3-row tensor in ``internal_names``: slicing records which third is taken."""

    shape = (3,)

    def __getitem__(self, rows: slice) -> _Third:
        return _Third(rows.start)


class PooledCLIPEmbedder(FrozenCLIPEmbedder):
    """A CLIP text tower in transformers' layout that also gives the pooled vector: the final
    layer norm's output at the first end-of-text token (transformers' pooler_output), through
    ``text_projection`` when the config has a projection (SD3), as it is otherwise (FLUX)."""

    def __init__(self, config: TextEncoderConfig):
        super().__init__(config)
        if config.projection_dim is not None:
            # Under the CLIPTextModel, where the file keeps it (transformer.text_projection.weight).
            self.transformer.text_projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)
            self.transformer.text_projection.requires_grad_(False)

    @property
    def has_pooled(self) -> bool:
        return True

    def encode_with_pooled(self, input_ids: torch.Tensor, clip_skip: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
        input_ids = input_ids.to(self.device)
        hidden, out = self._hidden(input_ids, clip_skip)
        final = out.last_hidden_state
        end = (input_ids == self.transformer.config.eos_token_id).int().argmax(dim=-1)
        pooled = final[torch.arange(final.shape[0], device=final.device), end]
        if self.config.projection_dim is not None:
            pooled = self.transformer.text_projection(pooled)
        return hidden, pooled

    @staticmethod
    def to_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = FrozenCLIPEmbedder.to_checkpoint(
            {k: v for k, v in state.items() if not k.startswith("transformer.text_projection.")})
        out.update({k: v for k, v in state.items() if k.startswith("transformer.text_projection.")})
        return out


def make_embedder(config: TextEncoderConfig) -> FrozenCLIPEmbedder:
    return FrozenOpenCLIPEmbedder(config) if config.layout == OPENCLIP else FrozenCLIPEmbedder(config)
