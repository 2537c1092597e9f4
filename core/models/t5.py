"""The T5 text encoder of SD3 / SD 3.5 and FLUX.1 (T5 v1.1 XXL), run as ``transformers.T5EncoderModel``.

Checkpoints hold it in transformers' own key layout, so the normalised layout's
``text_encoders.t5xxl.transformer.*`` is ``transformer.`` + the T5EncoderModel state-dict keys, with
one difference: transformers ties ``encoder.embed_tokens.weight`` to ``shared.weight`` and files
carry either name or both (``from_checkpoint`` fills in the one that is missing).

The pipelines read the last hidden state of every token, padding included: diffusers' SD3 and FLUX
pipelines pass no attention mask, and the models were trained that way.

Half precision: T5 v1.1's feed-forward output grows past float16's 65504 in the deep layers. transformers
keeps the ``wo`` projections in float32 for float16 (``T5PreTrainedModel._keep_in_fp32_modules``), but
only inside ``from_pretrained``; a model built from its config and given tensors (our loader) or cast
with ``.to(torch.float16)`` gets a float16 ``wo`` like everything else (transformers' T5 block then
clamps the overflowed residual to 64504: finite but wrong numbers). So this module names those
parameters itself (``float16_overflowing_parameters``, read by
``core.models.normalization.float32_parameter_names``) and the loader keeps them float32. transformers'
feed-forward then casts its input to ``wo``'s dtype, its output is float32, and the residual stream it is
added to becomes float32 from the first block on (the layer norms still hand float16 to the float16
attention and ``wi`` layers). bfloat16 has float32's range and needs nothing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields

import torch
from torch import nn
from transformers import T5Config, T5EncoderModel

from core.errors import EngineError

# Where the encoder sits in the normalised flow-family layout (SD3, FLUX).
T5XXL_PREFIX = "text_encoders.t5xxl."
EMBEDDING = "transformer.shared.weight"
TIED_EMBEDDING = "transformer.encoder.embed_tokens.weight"
FIRST_ATTENTION = "transformer.encoder.block.0.layer.0.SelfAttention."
FIRST_FEED_FORWARD = "transformer.encoder.block.0.layer.1.DenseReluDense."


@dataclass(frozen=True)
class T5EncoderConfig:
    """T5's shape. Defaults: T5 v1.1 XXL (google/t5-v1_1-xxl's config.json), the encoder of SD3 and FLUX.1."""

    vocab_size: int = 32128
    d_model: int = 4096
    d_kv: int = 64  # width of one attention head
    d_ff: int = 10240
    num_layers: int = 24
    num_heads: int = 64
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128  # not in the shapes; every released T5 uses 128
    gated_gelu: bool = True  # v1.1: gelu(wi_0 x) * wi_1 x; T5 1.0: relu(wi x)
    layer_norm_epsilon: float = 1e-6

    def to_hf(self) -> T5Config:
        # Every field but gated_gelu has T5Config's own name.
        same_names = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "gated_gelu"}
        return T5Config(
            **same_names,
            feed_forward_proj="gated-gelu" if self.gated_gelu else "relu",
            # No dropout even in training mode: the encoder is only ever run for inference here.
            dropout_rate=0.0, is_decoder=False, use_cache=False, pad_token_id=0, eos_token_id=1,
        )


def detect_t5(shapes: dict, prefix: str = T5XXL_PREFIX) -> T5EncoderConfig:
    """The encoder's config from its tensor shapes; ``prefix`` + ``transformer.*`` are the
    T5EncoderModel keys (the normalised layout's ``text_encoders.t5xxl.``)."""
    embedding = shapes.get(prefix + EMBEDDING, shapes.get(prefix + TIED_EMBEDDING))
    bias = shapes.get(prefix + FIRST_ATTENTION + "relative_attention_bias.weight")
    query = shapes.get(prefix + FIRST_ATTENTION + "q.weight")
    if embedding is None or bias is None or query is None:
        raise EngineError(f"no T5 encoder under {prefix!r}: it needs {EMBEDDING}, and block 0's query and relative attention bias")
    buckets, heads = bias
    inner, d_model = query
    if inner % heads:
        raise EngineError(f"T5 encoder: the query's {inner} rows do not split into {heads} heads")
    gated = prefix + FIRST_FEED_FORWARD + "wi_0.weight" in shapes
    up = shapes.get(prefix + FIRST_FEED_FORWARD + ("wi_0.weight" if gated else "wi.weight"))
    if up is None:
        raise EngineError("T5 encoder: block 0 has no feed-forward input projection (wi_0 or wi)")
    block = re.compile(re.escape(prefix) + r"transformer\.encoder\.block\.(\d+)\.")
    layers = {int(m.group(1)) for key in shapes if (m := block.match(key))}
    return T5EncoderConfig(
        vocab_size=embedding[0], d_model=d_model, d_kv=inner // heads, d_ff=up[0], num_layers=len(layers), num_heads=heads,
        relative_attention_num_buckets=buckets, gated_gelu=gated,
    )


class T5Encoder(nn.Module):
    """Token ids -> T5's last hidden state (the flow models' per-token context)."""

    def __init__(self, config: T5EncoderConfig):
        super().__init__()
        self.config = config
        self.transformer = T5EncoderModel(config.to_hf()).requires_grad_(False)

    @property
    def float16_overflowing_parameters(self) -> tuple[str, ...]:
        """Parameter names (relative to this module) that must stay float32 when the rest is float16:
        each block's feed-forward output projection, as transformers' ``_keep_in_fp32_modules``."""
        return tuple(
            f"transformer.encoder.block.{index}.layer.1.DenseReluDense.wo.weight"
            for index in range(self.config.num_layers)
        )

    def tie_embedding(self) -> None:
        """Make ``encoder.embed_tokens`` use ``shared``'s tensor again, as transformers ties them. A
        loader that converts each state-dict name's tensor on its own (``load_state_dict(assign=True)``)
        leaves two copies of the 32128 x 4096 table (263 MB in float16) until this is called."""
        self.transformer.encoder.embed_tokens.weight = self.transformer.shared.weight

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids -> (B, L, d_model) float32, every position attended (no mask, as diffusers)."""
        hidden = self.transformer(input_ids=input_ids.to(self.transformer.device)).last_hidden_state
        # float32 for every model; float64 stays (the parity tests' double-precision runs).
        return hidden if hidden.dtype == torch.float64 else hidden.float()

    forward = encode

    # --- checkpoint names ------------------------------------------------------------
    @staticmethod
    def from_checkpoint(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Keys relative to the encoder (``transformer.*``) -> ours: the same names, the tied
        embedding given under both of its names."""
        out = {key: value for key, value in tensors.items() if key.startswith("transformer.")}
        embedding = out.get(EMBEDDING, out.get(TIED_EMBEDDING))
        if embedding is not None:
            out.setdefault(EMBEDDING, embedding)
            out.setdefault(TIED_EMBEDDING, embedding)
        return out

    @staticmethod
    def to_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Ours -> the file's keys: the embedding once, as ``shared.weight`` (the tied copy is the same tensor)."""
        return {key: value for key, value in state.items() if key.startswith("transformer.") and key != TIED_EMBEDDING}
