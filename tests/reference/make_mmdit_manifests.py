"""Writes mmdit_{sd3_medium,sd35_medium,sd35_large}.json: the single-file key -> shape layout of the
SD3 / SD 3.5 MMDiT (keys under ``model.diffusion_model.``, prefix left off), derived from the
published diffusers transformer configs below by the naming rules of Stability's reference MMDiT
(sd3-ref ``mmditx.py``), written out here by hand and independently of core/models/mmdit.py.

Each layout is cross-checked before it is written: diffusers' single-file converter
(``convert_sd3_transformer_checkpoint_to_diffusers``), run on meta tensors of that shape, must
consume every key, and what it yields must be exactly the key/shape set of diffusers'
SD3Transformer2DModel built on the meta device with the same config.

Run once from the repository root: ``venv/bin/python tests/reference/make_mmdit_manifests.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

# transformer/config.json of stabilityai/stable-diffusion-3-medium-diffusers,
# stabilityai/stable-diffusion-3.5-medium and stabilityai/stable-diffusion-3.5-large (the keys
# that shape the weights; sample_size 128 in all three only sizes diffusers' own position table).
PUBLISHED_CONFIGS = {
    "sd3_medium": dict(
        attention_head_dim=64, caption_projection_dim=1536, in_channels=16, joint_attention_dim=4096,
        num_attention_heads=24, num_layers=24, out_channels=16, patch_size=2, pooled_projection_dim=2048,
        pos_embed_max_size=192, dual_attention_layers=[], qk_norm=None,
    ),
    "sd35_medium": dict(
        attention_head_dim=64, caption_projection_dim=1536, in_channels=16, joint_attention_dim=4096,
        num_attention_heads=24, num_layers=24, out_channels=16, patch_size=2, pooled_projection_dim=2048,
        pos_embed_max_size=384, dual_attention_layers=list(range(13)), qk_norm="rms_norm",
    ),
    "sd35_large": dict(
        attention_head_dim=64, caption_projection_dim=2432, in_channels=16, joint_attention_dim=4096,
        num_attention_heads=38, num_layers=38, out_channels=16, patch_size=2, pooled_projection_dim=2048,
        pos_embed_max_size=192, qk_norm="rms_norm", dual_attention_layers=[],
    ),
}
SOURCE_REPOS = {
    "sd3_medium": "stabilityai/stable-diffusion-3-medium-diffusers",
    "sd35_medium": "stabilityai/stable-diffusion-3.5-medium",
    "sd35_large": "stabilityai/stable-diffusion-3.5-large",
}
TIME_FREQUENCIES = 256  # the sinusoidal time-step embedding's width, fixed in every SD3 model
MLP_RATIO = 4


def linear(tensors: dict, name: str, n_in: int, n_out: int) -> None:
    tensors[f"{name}.weight"] = [n_out, n_in]
    tensors[f"{name}.bias"] = [n_out]


def attention(tensors: dict, name: str, dim: int, head_dim: int, qk_norm: bool, with_proj: bool) -> None:
    linear(tensors, f"{name}.qkv", dim, 3 * dim)
    if qk_norm:
        tensors[f"{name}.ln_q.weight"] = [head_dim]
        tensors[f"{name}.ln_k.weight"] = [head_dim]
    if with_proj:
        linear(tensors, f"{name}.proj", dim, dim)


def layout(config: dict) -> dict[str, list[int]]:
    dim = config["num_attention_heads"] * config["attention_head_dim"]
    head_dim, p, depth = config["attention_head_dim"], config["patch_size"], config["num_layers"]
    qk_norm = config["qk_norm"] == "rms_norm"
    tensors: dict[str, list[int]] = {}
    tensors["pos_embed"] = [1, config["pos_embed_max_size"] ** 2, dim]
    tensors["x_embedder.proj.weight"] = [dim, config["in_channels"], p, p]
    tensors["x_embedder.proj.bias"] = [dim]
    linear(tensors, "t_embedder.mlp.0", TIME_FREQUENCIES, dim)
    linear(tensors, "t_embedder.mlp.2", dim, dim)
    linear(tensors, "y_embedder.mlp.0", config["pooled_projection_dim"], dim)
    linear(tensors, "y_embedder.mlp.2", dim, dim)
    linear(tensors, "context_embedder", config["joint_attention_dim"], config["caption_projection_dim"])
    for i in range(depth):
        for stream in ("x_block", "context_block"):
            block = f"joint_blocks.{i}.{stream}"
            # The last block's text stream only feeds keys and values: no output projection, no
            # MLP, and a modulation of shift and scale alone.
            pre_only = stream == "context_block" and i == depth - 1
            dual = stream == "x_block" and i in config["dual_attention_layers"]
            modulation_vectors = 2 if pre_only else 9 if dual else 6
            linear(tensors, f"{block}.adaLN_modulation.1", dim, modulation_vectors * dim)
            attention(tensors, f"{block}.attn", dim, head_dim, qk_norm, with_proj=not pre_only)
            if dual:
                attention(tensors, f"{block}.attn2", dim, head_dim, qk_norm, with_proj=True)
            if not pre_only:
                linear(tensors, f"{block}.mlp.fc1", dim, MLP_RATIO * dim)
                linear(tensors, f"{block}.mlp.fc2", MLP_RATIO * dim, dim)
    linear(tensors, "final_layer.linear", dim, p * p * config["out_channels"])
    linear(tensors, "final_layer.adaLN_modulation.1", dim, 2 * dim)
    return tensors


def cross_check(config: dict, tensors: dict[str, list[int]]) -> None:
    from diffusers import SD3Transformer2DModel
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    checkpoint = {f"model.diffusion_model.{k}": torch.empty(shape, device="meta") for k, shape in tensors.items()}
    converted = convert_sd3_transformer_checkpoint_to_diffusers(checkpoint)
    if checkpoint:
        raise SystemExit(f"diffusers' converter left keys unconsumed: {sorted(checkpoint)}")
    with torch.device("meta"):
        model = SD3Transformer2DModel(**config)
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    got = {k: list(v.shape) for k, v in converted.items()}
    if got != expected:
        raise SystemExit(f"converted layout differs from SD3Transformer2DModel: {sorted(got.items() ^ expected.items())[:10]}")


def main() -> None:
    import diffusers

    for name, config in PUBLISHED_CONFIGS.items():
        tensors = layout(config)
        cross_check(config, tensors)
        manifest = {
            "model": f"{SOURCE_REPOS[name]}: the MMDiT of the single-file checkpoint, keys under model.diffusion_model.",
            "source": f"{SOURCE_REPOS[name]} transformer/config.json (published diffusers config)",
            "generated_with": (
                f"tests/reference/make_mmdit_manifests.py: key names by the SD3 reference MMDiT's naming rules; "
                f"cross-checked with diffusers {diffusers.__version__}'s convert_sd3_transformer_checkpoint_to_diffusers "
                f"(every key consumed) and SD3Transformer2DModel(**config) on the meta device (same key/shape set), "
                f"torch {torch.__version__}"
            ),
            "config": config,
            "parameters": sum(int(torch.Size(s).numel()) for s in tensors.values()),
            "tensors": tensors,
            "notes": (
                "pos_embed is the stored 2D sin-cos table over a pos_embed_max_size^2 patch grid, a picture "
                "using its centre crop. Files shipped with text encoders and VAE add text_encoders.* and "
                "first_stage_model.* beside these; this manifest covers the MMDiT only."
            ),
        }
        path = Path(__file__).parent / f"mmdit_{name}.json"
        path.write_text(json.dumps(manifest, indent=1) + "\n")
        print(f"{path.name}: {len(tensors)} tensors, {manifest['parameters']:,} parameters")


if __name__ == "__main__":
    main()
