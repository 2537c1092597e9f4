"""Tiny SD 3.x and FLUX.1 checkpoints in the real layouts, made on the fly (as tiny_models.py does
for the UNet families).

diffusers' own components are built with fixed random weights (transformer, 16-channel VAE
without quant convolutions, the CLIP towers with projections, a T5 v1.1-style encoder), saved as
a diffusers folder with their tokenizers, read by our loader and written back out as a ComfyUI-
layout single file with the T5 tokenizer beside it. The same components make the diffusers
pipeline the parity tests compare against. Widths and depths are cut; every key family is there.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tiny_models import clip_config, randomise

CLIP_L, CLIP_G, T5_WIDTH = 32, 64, 128  # SD3's context: CLIP-L + bigG (96) padded to T5's width

# A T5-like Unigram vocabulary: the three special pieces at T5's ids, word pieces, single letters.
TINY_T5_PIECES = (
    [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    + [(f"▁{word}", -3.0 - 0.1 * i) for i, word in enumerate(("a", "photo", "of", "the", "cat", "dog", "red", "on", "mat"))]
    + [(piece, -4.0 - 0.05 * i) for i, piece in enumerate("abcdefghijklmnopqrstuvwxyz,.")]
    + [("s", -3.5), ("ing", -3.6)]
)


def write_t5_tokenizer_json(path: Path) -> Path:
    """A tokenizer.json in T5's form (Unigram pieces, Metaspace, ``</s>`` appended)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tokenizer = Tokenizer(models.Unigram(TINY_T5_PIECES, unk_id=2))
    tokenizer.normalizer = normalizers.Replace(Regex(" {2,}"), "▁")  # as T5's own (after its precompiled map)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def t5_tokenizer(folder: Path):
    from transformers import T5TokenizerFast

    path = write_t5_tokenizer_json(folder / "tokenizer.json")
    return T5TokenizerFast(tokenizer_file=str(path), eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def tiny_t5():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(
        vocab_size=len(TINY_T5_PIECES), d_model=T5_WIDTH, d_kv=32, d_ff=256, num_layers=2, num_heads=4,
        relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
    ))


def vae16(scaling_factor: float, shift_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=16, norm_num_groups=32,
        sample_size=64, scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=False,
        use_post_quant_conv=False,
    )


def sd3_components(seed: int = 0, with_t5: bool = True) -> dict:
    """SD3's parts: MMDiT (3 joint blocks, heads of 64), VAE, CLIP-L and bigG with projections, T5."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    parts = {
        "transformer": SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=16, num_layers=3, attention_head_dim=64, num_attention_heads=2,
            joint_attention_dim=T5_WIDTH, caption_projection_dim=128, pooled_projection_dim=CLIP_L + CLIP_G,
            out_channels=16, pos_embed_max_size=16,
        ),
        "vae": vae16(1.5305, 0.0609),
        "text_encoder": CLIPTextModelWithProjection(clip_config(CLIP_L, 2, "quick_gelu", 49407, CLIP_L)),
        "text_encoder_2": CLIPTextModelWithProjection(clip_config(CLIP_G, 2, "gelu", 0, CLIP_G)),
    }
    if with_t5:
        parts["text_encoder_3"] = tiny_t5()
    randomise(parts.values(), seed + 1)
    return {name: module.eval() for name, module in parts.items()}


def flux_components(seed: int = 0, dev: bool = True, velocity_scale: float = 1.0) -> dict:
    """FLUX's parts: the transformer (heads 128 wide for the real rotary axes), VAE, CLIP-L, T5.
    ``velocity_scale`` shrinks the transformer's output layer: random weights otherwise predict
    velocities of magnitude ~30 that drown what img2img starts from."""
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    parts = {
        "transformer": FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=128, num_attention_heads=2,
            joint_attention_dim=T5_WIDTH, pooled_projection_dim=CLIP_L, guidance_embeds=dev, axes_dims_rope=(16, 56, 56),
        ),
        "vae": vae16(0.3611, 0.1159),
        "text_encoder": CLIPTextModel(clip_config(CLIP_L, 2, "quick_gelu", 49407)),
        "text_encoder_2": tiny_t5(),
    }
    randomise(parts.values(), seed + 1)
    with torch.no_grad():
        for p in parts["transformer"].proj_out.parameters():
            p.mul_(velocity_scale)
    return {name: module.eval() for name, module in parts.items()}


def save_flow_folder(folder: Path, parts: dict, pipeline: str, scheduler: dict) -> Path:
    """A diffusers folder of ``parts`` with its tokenizers (CLIP from the bundled vocabulary)."""
    from core.text.tokenizer import load_clip_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    for name, module in parts.items():
        module.save_pretrained(folder / name)
    load_clip_tokenizer().hf.save_pretrained(folder / "tokenizer")
    t5_folder = "tokenizer_3" if pipeline.startswith("StableDiffusion3") else "tokenizer_2"
    if pipeline.startswith("StableDiffusion3"):
        load_clip_tokenizer(pad_with_eos=False).hf.save_pretrained(folder / "tokenizer_2")
    write_t5_tokenizer_json(folder / t5_folder / "tokenizer.json")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))
    return folder


def save_single_file(folder: Path, out: Path, drop: tuple[str, ...] = ()) -> Path:
    """The folder's weights, read by our loader, as one ComfyUI-layout .safetensors file (leaving
    out the keys under ``drop``), with the T5 tokenizer beside it."""
    from safetensors.torch import save_file

    from core.loading import read_checkpoint

    tensors, _ = read_checkpoint(folder)
    state = {k: v.clone().contiguous() for k, v in tensors.items() if not k.startswith(drop)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, out)
    write_t5_tokenizer_json(out.parent / "tokenizer.json")
    return out


SD3_SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


def flux_scheduler(kind: str) -> dict:
    """The released scheduler configs: dev shifts by the picture's size, schnell not at all."""
    if kind == "schnell":
        return {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 1.0,
                "use_dynamic_shifting": False}
    return {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0,
            "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
            "max_image_seq_len": 4096}
