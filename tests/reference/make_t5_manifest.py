"""Writes t5xxl_encoder.json: the key -> shape layout of the T5 v1.1 XXL encoder that SD3 / SD 3.5
(``text_encoder_3``) and FLUX.1 (``text_encoder_2``) use, as transformers' ``T5EncoderModel`` names
its state dict (bundled checkpoints put it under ``text_encoders.t5xxl.transformer.``).

The model is built from the published config below on the meta device (no weights, nothing
downloaded) and its ``state_dict()`` is read; nothing from core/ is used. transformers ties
``encoder.embed_tokens.weight`` to ``shared.weight``: the manifest lists ``shared.weight`` as the
tensor and the tied name under ``tied_keys`` (files carry one name or both).

Run once from the repository root: ``venv/bin/python tests/reference/make_t5_manifest.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

# config.json of google/t5-v1_1-xxl (the same values as text_encoder_3/config.json of
# stabilityai/stable-diffusion-3-medium-diffusers and text_encoder_2/config.json of
# black-forest-labs/FLUX.1-dev): the keys that shape the weights or the computation.
PUBLISHED_CONFIG = dict(
    d_ff=10240, d_kv=64, d_model=4096, num_heads=64, num_layers=24, vocab_size=32128,
    feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", relative_attention_num_buckets=32,
    relative_attention_max_distance=128, layer_norm_epsilon=1e-6, tie_word_embeddings=False,
)
TIED = {"encoder.embed_tokens.weight": "shared.weight"}


def manifest() -> dict:
    import transformers
    from transformers import T5Config, T5EncoderModel

    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**PUBLISHED_CONFIG))
    state = model.state_dict()
    tensors = {key: list(value.shape) for key, value in state.items() if key not in TIED}
    parameters = sum(value.numel() for key, value in state.items() if key not in TIED)
    return {
        "model": "T5 v1.1 XXL encoder (SD3 / SD 3.5 text_encoder_3, FLUX.1 text_encoder_2)",
        "source": {"config": "google/t5-v1_1-xxl config.json", "values": PUBLISHED_CONFIG},
        "generated_with": f"transformers {transformers.__version__} T5EncoderModel on the meta device, torch {torch.__version__}",
        "key_prefix_in_bundled_files": "text_encoders.t5xxl.transformer.",
        "parameters": parameters,
        "tensors": tensors,
        "tied_keys": TIED,
        "buffers": {key: list(value.shape) for key, value in model.named_buffers()},
        "notes": [
            "Bias-free linears and RMS layer norms (weight only). relative_attention_bias [buckets, heads] exists in block 0 only; "
            "the other blocks reuse it.",
            "tied_keys: a file may hold the embedding as shared.weight, encoder.embed_tokens.weight or both (same values).",
        ],
    }


if __name__ == "__main__":
    out = Path(__file__).resolve().parent / "t5xxl_encoder.json"
    out.write_text(json.dumps(manifest(), indent=1) + "\n")
    print(f"{out.name}: {len(manifest()['tensors'])} tensors")
