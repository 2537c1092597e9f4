"""Tiny Stable Diffusion checkpoints (1.x, 2.x, SDXL base and refiner, x4 upscaler) in the real
file layouts, made on the fly.

The weights are random but identical between our model and diffusers' (the oracle): a
diffusers UNet/VAE/CLIP is built with a fixed seed, saved as a diffusers folder, read by our
loader, and written back out in the single-file layout as .safetensors and .ckpt.

SD 2.x and x4 text towers follow the real conversion: the single file holds the whole OpenCLIP
tower (plus text_projection and logit_scale), the diffusers folder a CLIPTextModel without the
last layer, which SD 2.x never reads. SD 2.x/SDXL UNets use heads of 64, so their tiny widths
are multiples of 64.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

# Key/shape manifests of real checkpoint and LoRA files (tests/reference/README.md says where they
# come from); a copy lives in the project so a fresh clone tests against them.
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"

TEXT_HIDDEN = 64


def diffusers_components(seed: int = 0, in_channels: int = 4, norm_groups: int = 32):
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
        norm_num_groups=norm_groups,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=norm_groups,
        sample_size=64,
    )
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408, hidden_size=TEXT_HIDDEN, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=1, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        )
    )
    randomise((unet, vae, text), seed + 1)
    return unet.eval(), vae.eval(), text.eval()


def randomise(modules, seed: int) -> None:
    """Random init leaves some layers at zero (e.g. conv_out); give every weight a real value so
    parity tests see each layer's contribution."""
    generator = torch.Generator().manual_seed(seed)
    for module in modules:
        for name, p in module.named_parameters():
            with torch.no_grad():
                if "norm" in name and name.endswith("weight"):
                    p.copy_(1 + 0.1 * torch.randn(p.shape, generator=generator))
                elif p.ndim > 1 and "embedding" not in name:
                    p.copy_(torch.randn(p.shape, generator=generator) / max(1, p[0].numel()) ** 0.5)
                elif "embedding" not in name:
                    p.copy_(0.05 * torch.randn(p.shape, generator=generator))


def save_diffusers_folder(folder: Path, seed: int = 0, in_channels: int = 4, norm_groups: int = 32) -> Path:
    from core.text.tokenizer import load_clip_tokenizer

    unet, vae, text = diffusers_components(seed, in_channels, norm_groups)
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


# --- SD 2.x, x4 upscaler, SDXL ------------------------------------------------------------

OPENCLIP_HIDDEN = 64  # SD 2.x / x4 tiny ViT-H stand-in
SDXL_L_HIDDEN, SDXL_G_HIDDEN, SDXL_POOLED, SDXL_TIME_DIM = 64, 128, 96, 8


def clip_config(hidden: int, layers: int, act: str, pad_id: int, projection: int | None = None):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64), max_position_embeddings=77, hidden_act=act,
        projection_dim=projection or hidden, bos_token_id=49406, eos_token_id=49407, pad_token_id=pad_id,
    )


def openclip_tower(seed: int, hidden: int = OPENCLIP_HIDDEN, layers: int = 3, projection: int | None = None):
    """(full tower as CLIPTextModel, the diffusers text encoder = the tower without its last
    layer, text_projection P [hidden, projection], logit_scale)."""
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    full = CLIPTextModel(clip_config(hidden, layers, "gelu", 0))
    randomise((full,), seed + 7)
    truncated = CLIPTextModel(clip_config(hidden, layers - 1, "gelu", 0))
    truncated.load_state_dict({k: v for k, v in full.state_dict().items() if f"layers.{layers - 1}." not in k})
    generator = torch.Generator().manual_seed(seed + 8)
    projection_matrix = torch.randn(hidden, projection or hidden, generator=generator) / hidden**0.5
    return full.eval(), truncated.eval(), projection_matrix, torch.tensor(4.6052)


def openclip_single_file(prefix: str, full, projection, logit_scale) -> dict[str, torch.Tensor]:
    """A CLIPTextModel (OpenCLIP weights) -> open_clip checkpoint names under ``prefix``."""
    from core.models.clip import FrozenOpenCLIPEmbedder

    state = {"transformer." + k: v for k, v in full.state_dict().items() if not k.endswith("position_ids")}
    state["text_projection"], state["logit_scale"] = projection, logit_scale
    return {prefix + k: v.clone().contiguous() for k, v in FrozenOpenCLIPEmbedder.to_checkpoint(state).items()}


def tiny_vae(levels: int = 4, scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    widths = (32, 32, 64, 64) if levels == 4 else (32, 64, 64)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=widths,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        layers_per_block=1, latent_channels=4, norm_num_groups=32, sample_size=64, scaling_factor=scaling_factor,
    )


def sd2_components(seed: int = 0, in_channels: int = 4):
    """SD 2.x layout: linear projections, heads of 64, OpenCLIP text tower.
    -> (unet, vae, diffusers text encoder, (full tower, projection, logit_scale))."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(64, 128, 128),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, cross_attention_dim=OPENCLIP_HIDDEN, attention_head_dim=(1, 2, 2),
        use_linear_projection=True, norm_num_groups=32,
    )
    vae = tiny_vae()
    randomise((unet, vae), seed + 1)
    full, truncated, projection, logit_scale = openclip_tower(seed)
    return unet.eval(), vae.eval(), truncated, (full, projection, logit_scale)


def x4_components(seed: int = 0):
    """x4 upscaler layout: 7 input channels, noise-level class table, cross-attention-only
    blocks at the first attention level, f=4 VAE, OpenCLIP text tower."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        # The cross-attention-only level is 32 wide, the context 64: the shapes tell it apart.
        sample_size=16, in_channels=7, out_channels=4, block_out_channels=(32, 32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        only_cross_attention=(False, True, False), layers_per_block=1, cross_attention_dim=OPENCLIP_HIDDEN,
        attention_head_dim=8, use_linear_projection=True, num_class_embeds=1000, norm_num_groups=32,
    )
    vae = tiny_vae(levels=3, scaling_factor=0.08333)
    randomise((unet, vae), seed + 1)
    full, truncated, projection, logit_scale = openclip_tower(seed)
    return unet.eval(), vae.eval(), truncated, (full, projection, logit_scale)


def sdxl_components(seed: int = 0, refiner: bool = False):
    """SDXL layout (no attention at the first level, depth 2 at the second, "text_time" added
    embedding); the refiner has only the OpenCLIP encoder and an aesthetic score instead of the
    target size. -> (unet, vae, CLIP-L or None, OpenCLIP bigG CLIPTextModelWithProjection)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    context = SDXL_G_HIDDEN if refiner else SDXL_L_HIDDEN + SDXL_G_HIDDEN
    numbers = 5 if refiner else 6
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=2, transformer_layers_per_block=(1, 2), attention_head_dim=(1, 2),
        cross_attention_dim=context, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_DIM, projection_class_embeddings_input_dim=SDXL_POOLED + numbers * SDXL_TIME_DIM,
        norm_num_groups=32,
    )
    vae = tiny_vae(scaling_factor=0.13025)
    clip_l = None if refiner else CLIPTextModel(clip_config(SDXL_L_HIDDEN, 2, "quick_gelu", 49407))
    bigg = CLIPTextModelWithProjection(clip_config(SDXL_G_HIDDEN, 3, "gelu", 0, SDXL_POOLED))
    randomise([m for m in (unet, vae, clip_l, bigg) if m is not None], seed + 1)
    return unet.eval(), vae.eval(), (clip_l.eval() if clip_l is not None else None), bigg.eval()


def _save_common(folder: Path, unet, vae, pipeline: str, scheduler: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet")
    vae.save_pretrained(folder / "vae")
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline}))


def euler_config(prediction: str = "epsilon", start: float = 0.00085, end: float = 0.012) -> dict:
    return {
        "_class_name": "EulerDiscreteScheduler", "beta_start": start, "beta_end": end, "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000, "prediction_type": prediction,
    }


def _single_file(folder: Path, extra: dict[str, torch.Tensor], drop_prefix: str | None = None) -> dict[str, torch.Tensor]:
    state = single_file_state_dict(folder)
    if drop_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(drop_prefix)}
    state.update(extra)
    return state


def _write(state: dict[str, torch.Tensor], out_dir: Path, name: str) -> dict[str, Path]:
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"safetensors": out_dir / f"{name}.safetensors", "ckpt": out_dir / f"{name}.ckpt"}
    save_file(state, paths["safetensors"])
    torch.save({"state_dict": state, "global_step": 1}, paths["ckpt"])
    return paths


def save_sd2(root: Path, name: str = "tiny-sd2", seed: int = 0, prediction: str = "v", in_channels: int = 4) -> dict[str, Path]:
    """Diffusers folder (scheduler says the prediction) and single files (which do not)."""
    from core.text.tokenizer import load_clip_tokenizer

    unet, vae, text, (full, projection, logit_scale) = sd2_components(seed, in_channels)
    folder = root / f"{name}-diffusers"
    _save_common(folder, unet, vae, "StableDiffusionPipeline", euler_config("v_prediction" if prediction == "v" else "epsilon"))
    text.save_pretrained(folder / "text_encoder")
    load_clip_tokenizer(pad_with_eos=False).hf.save_pretrained(folder / "tokenizer")
    state = _single_file(folder, openclip_single_file("cond_stage_model.", full, projection, logit_scale), "cond_stage_model.")
    paths = _write(state, root, name)
    paths["diffusers"] = folder
    return paths


def save_x4(root: Path, name: str = "tiny-x4", seed: int = 0) -> dict[str, Path]:
    from core.text.tokenizer import load_clip_tokenizer

    unet, vae, text, (full, projection, logit_scale) = x4_components(seed)
    folder = root / f"{name}-diffusers"
    _save_common(folder, unet, vae, "StableDiffusionUpscalePipeline", euler_config("v_prediction", 0.0001, 0.02))
    text.save_pretrained(folder / "text_encoder")
    load_clip_tokenizer(pad_with_eos=False).hf.save_pretrained(folder / "tokenizer")
    state = _single_file(folder, openclip_single_file("cond_stage_model.", full, projection, logit_scale), "cond_stage_model.")
    # Real x4 files carry the low-scale model's schedule buffers: accepted and ignored.
    state["low_scale_model.alphas_cumprod"] = torch.ones(1000)
    paths = _write(state, root, name)
    paths["diffusers"] = folder
    return paths


def save_sdxl(root: Path, name: str = "tiny-sdxl", seed: int = 0, refiner: bool = False) -> dict[str, Path]:
    from core.text.tokenizer import load_clip_tokenizer

    unet, vae, clip_l, bigg = sdxl_components(seed, refiner)
    folder = root / f"{name}-diffusers"
    _save_common(folder, unet, vae, "StableDiffusionXLImg2ImgPipeline" if refiner else "StableDiffusionXLPipeline", euler_config())
    if clip_l is not None:
        clip_l.save_pretrained(folder / "text_encoder")
        load_clip_tokenizer().hf.save_pretrained(folder / "tokenizer")
    bigg.save_pretrained(folder / "text_encoder_2")
    load_clip_tokenizer(pad_with_eos=False).hf.save_pretrained(folder / "tokenizer_2")
    # Single files carry logit_scale (unused) as the released ones do; diffusers has none.
    logit = f"conditioner.embedders.{0 if refiner else 1}.model.logit_scale"
    paths = _write(_single_file(folder, {logit: torch.tensor(4.6052)}), root, name)
    paths["diffusers"] = folder
    return paths


def engine_on_tiny_checkpoint(root: Path, checkpoint: Path, **options):
    """A real Engine on the CPU over a copy of ``checkpoint`` (as tiny.safetensors) in
    <root>/models/Stable-diffusion, saving in <root>/outputs; ``options``: more of Engine's
    arguments (models_dir, extensions_dir, ...)."""
    import shutil

    from core.engine import Engine

    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    shutil.copy(checkpoint, ckpts / "tiny.safetensors")
    return Engine(device="cpu", ckpt_dir=ckpts, output_dir=root / "outputs", hash_cache=root / "hashes.json", **options)
