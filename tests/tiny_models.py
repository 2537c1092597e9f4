"""Tiny Stable Diffusion 1.x checkpoints in the real file layouts, made on the fly.

The weights are random but identical between our model and diffusers' (the oracle): a
diffusers UNet/VAE/CLIP is built with a fixed seed, saved as a diffusers folder, read by our
loader, and written back out in the single-file layout as .safetensors and .ckpt.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

TEXT_HIDDEN = 64


def diffusers_components(seed: int = 0, in_channels: int = 4):
    """UNet (3 levels: attention, attention, none — like SD's last level), f=8 VAE, 2-layer CLIP."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,  # diffusers' SD 1.x name for "8 heads"
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=TEXT_HIDDEN, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        )
    )
    # Random init leaves some layers at zero (e.g. conv_out); give every weight a real value so
    # parity tests see each layer's contribution.
    generator = torch.Generator().manual_seed(seed + 1)
    for module in (unet, vae, text):
        for name, p in module.named_parameters():
            with torch.no_grad():
                if "norm" in name and name.endswith("weight"):
                    p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
                elif p.ndim > 1 and "embedding" not in name:
                    p.copy_(torch.randn(p.shape, generator=generator) / max(1, p[0].numel()) ** 0.5)
                elif "embedding" not in name:
                    p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    return unet.eval(), vae.eval(), text.eval()


def save_diffusers_folder(folder: Path, seed: int = 0, in_channels: int = 4) -> Path:
    from core.text.tokenizer import load_clip_tokenizer

    unet, vae, text = diffusers_components(seed, in_channels)
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    text.save_pretrained(folder / "text_encoder")
    load_clip_tokenizer().hf.save_pretrained(folder / "tokenizer")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    }))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    }))
    return folder


def single_file_state_dict(diffusers_folder: Path) -> dict[str, torch.Tensor]:
    """The folder's weights under single-file checkpoint names (via our own loader)."""
    from core.loading import read_checkpoint

    tensors, _ = read_checkpoint(diffusers_folder)
    return {k: v.clone().contiguous() for k, v in tensors.items()}


def save_single_files(diffusers_folder: Path, out_dir: Path, name: str = "tiny") -> dict[str, Path]:
    """.safetensors (fp32 and fp16) and .ckpt files of the same weights."""
    from safetensors.torch import save_file

    state = single_file_state_dict(diffusers_folder)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "safetensors": out_dir / f"{name}.safetensors",
        "fp16": out_dir / f"{name}-fp16.safetensors",
        "ckpt": out_dir / f"{name}.ckpt",
    }
    save_file(state, paths["safetensors"])
    save_file({k: v.half() for k, v in state.items()}, paths["fp16"])
    torch.save({"state_dict": state, "global_step": 1}, paths["ckpt"])
    return paths
