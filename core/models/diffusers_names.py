"""Names in a diffusers folder -> names in the single-file checkpoint layout.

Diffusers groups the UNet into down/mid/up blocks of resnets and attentions; the original
layout numbers every stage (``input_blocks.N``). The mapping is computed from the keys
themselves (how many resnets per block, which up blocks hold attention), so it needs no
config.json and works for any width or depth.
"""
from __future__ import annotations

import re

RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION_PARTS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {m.group(1) for k in keys if (m := rx.match(k))}
    return len(found)


def _resnet_rest(rest: str) -> str:
    part, _, tail = rest.partition(".")
    if part == "conv_shortcut" or part in RESNET_PARTS:
        return f"{RESNET_PARTS[part]}.{tail}"
    return rest


def unet_key(key: str, keys) -> str:
    """One diffusers UNet key -> its ``model.diffusion_model.`` key (without that prefix)."""
    layers = _count(keys, r"down_blocks\.0\.resnets\.(\d+)\.")
    simple = {
        "conv_in.": "input_blocks.0.0.",
        "time_embedding.linear_1.": "time_embed.0.",
        "time_embedding.linear_2.": "time_embed.2.",
        "add_embedding.linear_1.": "label_emb.0.0.",
        "add_embedding.linear_2.": "label_emb.0.2.",
        "class_embedding.": "label_emb.",  # x4 upscaler: the noise-level table
        "conv_norm_out.": "out.0.",
        "conv_out.": "out.2.",
    }
    for old, new in simple.items():
        if key.startswith(old):
            return new + key[len(old):]
    if m := re.match(r"(down|up)_blocks\.(\d+)\.(.*)", key):
        direction, level, rest = m[1], int(m[2]), m[3]
        # Every level takes layers + 1 numbered blocks (the down side's last one is its
        # downsampler, the up side has a resnet more); input block 0 is conv_in.
        blocks, first = ("input_blocks", 1) if direction == "down" else ("output_blocks", 0)
        first += level * (layers + 1)
        if r := re.match(r"(resnets|attentions)\.(\d+)\.(.*)", rest):
            index = first + int(r[2])
            return f"{blocks}.{index}.0.{_resnet_rest(r[3])}" if r[1] == "resnets" else f"{blocks}.{index}.1.{r[3]}"
        if direction == "down" and (r := re.match(r"downsamplers\.0\.conv\.(.*)", rest)):
            return f"input_blocks.{first + layers}.0.op.{r[1]}"
        if direction == "up" and (r := re.match(r"upsamplers\.0\.conv\.(.*)", rest)):
            # The upsampler joins the level's last output block, after its attention if any.
            has_attention = any(k.startswith(f"up_blocks.{level}.attentions.") for k in keys)
            return f"output_blocks.{first + layers}.{2 if has_attention else 1}.conv.{r[1]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet_rest(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    raise KeyError(key)


def vae_key(key: str, keys) -> str:
    """One diffusers AutoencoderKL key -> its ``first_stage_model.`` key (without that prefix)."""
    levels = _count(keys, r"decoder\.up_blocks\.(\d+)\.")
    for old, new in {"conv_norm_out.": "norm_out.", "conv_in.": "conv_in.", "conv_out.": "conv_out."}.items():
        for side in ("encoder.", "decoder."):
            if key.startswith(side + old):
                return side + new + key[len(side + old):]
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return key
    # One resolution level: its resnets and its down- (encoder) or up-sampler (decoder).
    if m := re.match(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.(.*)", key):
        tower, level, rest = m[1], int(m[2]), m[3]
        direction = tower.partition(".")[2]
        if tower == "decoder.up":
            level = levels - 1 - level  # diffusers counts up-blocks from the lowest resolution
        stage = f"{tower}.{level}"
        if r := re.match(r"resnets\.(\d+)\.(.*)", rest):
            return f"{stage}.block.{r[1]}.{r[2].replace('conv_shortcut', 'nin_shortcut')}"
        if r := re.match(rf"{direction}samplers\.0\.conv\.(.*)", rest):
            return f"{stage}.{direction}sample.conv.{r[1]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)", key):
        part, _, tail = m[2].rpartition(".")
        return f"{m[1]}.mid.attn_1.{VAE_ATTENTION_PARTS[part]}.{tail}"
    raise KeyError(key)


def text_key(key: str) -> str:
    """A transformers CLIPTextModel(WithProjection) key -> our embedder's ``transformer.*``
    name (``text_model.`` dropped; ``text_projection.weight`` kept for the caller)."""
    key = key.removeprefix("text_model.")
    return key if key.startswith("text_projection") else "transformer." + key


def is_vae_linear_attention(ldm_key: str) -> bool:
    """Diffusers stores the VAE's attention projections as Linear; the checkpoint as 1x1 convs."""
    return bool(re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", ldm_key))


def vae_state(tensors: dict) -> dict:
    """A whole diffusers AutoencoderKL state -> the ``first_stage_model.`` names (without that
    prefix); KeyError naming the first key that is not a VAE weight."""
    converted = {}
    for key, value in tensors.items():
        new = vae_key(key, tensors)
        if is_vae_linear_attention(new) and value.ndim == 2:
            value = value[:, :, None, None]  # diffusers' Linear attention -> the checkpoint's 1x1 convolutions
        converted[new] = value
    return converted
