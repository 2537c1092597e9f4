"""Read a checkpoint's architecture from its keys and tensor shapes: no config file needed.

Families are told apart by where their text encoder lives (``cond_stage_model.transformer``
for SD 1.x, ``cond_stage_model.model`` for SD 2.x, ``conditioner.embedders`` for SDXL); widths,
depths and channel counts are read off the shapes. Only SD 1.x is built for now; the others
are recognised and reported by name so the message says what is missing.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from core.errors import EngineError
from core.models.clip import TextEncoderConfig
from core.models.unet import UNetConfig
from core.models.vae import VAEConfig

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TEXT = "cond_stage_model.transformer.text_model."

SD1 = "sd1"
SD1_INPAINT = "sd1-inpaint"
FAMILY_LABELS = {SD1: "SD 1.x", SD1_INPAINT: "SD 1.x inpainting"}


@dataclass(frozen=True)
class ModelSpec:
    family: str
    unet: UNetConfig
    vae: VAEConfig
    text: TextEncoderConfig
    prediction: str = "eps"  # what the UNet predicts: "eps" (noise) or "v"
    linear_start: float = 0.00085
    linear_end: float = 0.012
    num_timesteps: int = 1000
    notes: tuple[str, ...] = field(default=())

    @property
    def label(self) -> str:
        return FAMILY_LABELS.get(self.family, self.family)


def _indices(shapes: dict, prefix: str, pattern: str) -> list[int]:
    rx = re.compile(re.escape(prefix) + pattern)
    return sorted({int(m.group(1)) for k in shapes if (m := rx.match(k))})


def detect_unet(shapes: dict, prefix: str = UNET, *, num_heads: int | None = 8, head_dim: int | None = None) -> UNetConfig:
    def shape(key):
        return shapes[prefix + key]

    conv_in = shape("input_blocks.0.0.weight")
    model_channels, in_channels = conv_in[0], conv_in[1]
    out_channels = shape("out.2.weight")[0]

    # Walk the input blocks: a block holding ".op." is a downsample and closes a level.
    blocks = _indices(shapes, prefix, r"input_blocks\.(\d+)\.")
    levels: list[list[int]] = [[]]
    for i in blocks[1:]:
        if prefix + f"input_blocks.{i}.0.op.weight" in shapes:
            levels.append([])
        else:
            levels[-1].append(i)
    num_res_blocks = len(levels[0])
    channel_mult, depth = [], []
    context_dim, use_linear = None, False
    for level in levels:
        if len(level) != num_res_blocks:
            raise EngineError(f"UNet levels have different numbers of blocks ({[len(lv) for lv in levels]})")
        first = level[0]
        channel_mult.append(shape(f"input_blocks.{first}.0.out_layers.3.weight")[0] // model_channels)
        tb = _indices(shapes, prefix, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        depth.append(len(tb))
        if tb:
            context_dim = shape(f"input_blocks.{first}.1.transformer_blocks.0.attn2.to_k.weight")[1]
            use_linear = len(shape(f"input_blocks.{first}.1.proj_in.weight")) == 2
    middle_depth = len(_indices(shapes, prefix, r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    if context_dim is None and middle_depth:
        context_dim = shape("middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
    adm = shapes.get(prefix + "label_emb.0.0.weight")
    return UNetConfig(
        in_channels=in_channels,
        out_channels=out_channels,
        model_channels=model_channels,
        channel_mult=tuple(channel_mult),
        num_res_blocks=num_res_blocks,
        transformer_depth=tuple(depth),
        transformer_depth_middle=middle_depth,
        context_dim=context_dim or 768,
        num_heads=num_heads,
        head_dim=head_dim,
        use_linear_projection=use_linear,
        adm_in_channels=adm[1] if adm is not None else None,
    )


def detect_vae(shapes: dict, prefix: str = VAE, scaling_factor: float = 0.18215) -> VAEConfig:
    ch = shapes[prefix + "encoder.conv_in.weight"][0]
    levels = _indices(shapes, prefix, r"encoder\.down\.(\d+)\.")
    ch_mult = tuple(shapes[prefix + f"encoder.down.{i}.block.0.conv2.weight"][0] // ch for i in levels)
    num_res_blocks = len(_indices(shapes, prefix, r"encoder\.down\.0\.block\.(\d+)\."))
    return VAEConfig(
        in_channels=shapes[prefix + "encoder.conv_in.weight"][1],
        out_channels=shapes[prefix + "decoder.conv_out.weight"][0],
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=num_res_blocks,
        z_channels=shapes[prefix + "decoder.conv_in.weight"][1],
        embed_dim=shapes[prefix + "post_quant_conv.weight"][1],
        scaling_factor=scaling_factor,
    )


def detect_clip_text(shapes: dict, prefix: str = TEXT) -> TextEncoderConfig:
    vocab, hidden = shapes[prefix + "embeddings.token_embedding.weight"]
    return TextEncoderConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=shapes[prefix + "encoder.layers.0.mlp.fc1.weight"][0],
        num_layers=len(_indices(shapes, prefix, r"encoder\.layers\.(\d+)\.")),
        max_positions=shapes[prefix + "embeddings.position_embedding.weight"][0],
    )


def describe(shapes: dict) -> str:
    """A short account of what a state dict holds, for error messages."""
    tops = sorted({k.split(".")[0] for k in shapes})
    return f"{len(shapes)} tensors; top-level names: {', '.join(tops[:8])}{' ...' if len(tops) > 8 else ''}"


def detect(shapes: dict, metadata: dict | None = None) -> ModelSpec:
    """shapes: checkpoint key -> shape (tuple), keys already normalised by the loader."""
    metadata = metadata or {}
    has = lambda key: key in shapes  # noqa: E731
    if has("conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight") or any(
        k.startswith("conditioner.embedders.") for k in shapes
    ):
        raise EngineError("SDXL checkpoints are recognised but not supported yet (needs the SD 2.x/SDXL work)")
    if any(k.startswith("cond_stage_model.model.") for k in shapes):
        raise EngineError("SD 2.x checkpoints (OpenCLIP text encoder) are recognised but not supported yet")
    required = [UNET + "input_blocks.0.0.weight", VAE + "encoder.conv_in.weight", TEXT + "embeddings.token_embedding.weight"]
    missing = [k for k in required if not has(k)]
    if missing:
        raise EngineError(f"unknown model layout: no {missing[0]} ({describe(shapes)})")
    try:
        unet = detect_unet(shapes, num_heads=int(metadata.get("unet_num_heads", 8)))
        vae = detect_vae(shapes, scaling_factor=float(metadata.get("latent_scale_factor", 0.18215)))
        text = detect_clip_text(shapes)
    except KeyError as e:
        raise EngineError(f"incomplete SD 1.x checkpoint: missing {e.args[0]}") from None
    if unet.in_channels == 9:
        family = SD1_INPAINT
    elif unet.in_channels == vae.embed_dim:
        family = SD1
    else:
        raise EngineError(f"unknown SD 1.x variant: UNet takes {unet.in_channels} input channels")
    return ModelSpec(family=family, unet=unet, vae=vae, text=text, prediction=metadata.get("prediction", "eps"))
