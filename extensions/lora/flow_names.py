"""LoRA names for the transformer families: SD 3.x (MMDiT) and FLUX.1.

Their checkpoints (and our module tree) keep the original single-file names:
``joint_blocks.N.{x_block,context_block}.*`` (SD3) and ``double_blocks.N.*`` /
``single_blocks.N.*`` (FLUX, BFL's names). kohya, ai-toolkit and ComfyUI LoRAs use those names
(``lora_unet_double_blocks_0_img_attn_qkv``, ``diffusion_model.single_blocks.3.linear1``), so
they need no table beyond the key itself. diffusers and PEFT LoRAs name diffusers' modules
instead, which split the fused weights: q, k and v of an attention are three Linears
(``attn.to_q`` ...), and a FLUX single block's ``linear1`` is q, k, v and the MLP input
(``attn.to_q`` ... ``proj_mlp``). Such a module changes a block of rows of the fused weight.
The final AdaLN (and SD3's last text-stream AdaLN, whose text stream stops there) is (shift,
scale) in the file but (scale, shift) in diffusers: a LoRA on it has its two halves swapped.

The tables below are diffusers' own single-file conversion read backwards
(``convert_sd3_transformer_checkpoint_to_diffusers``, ``convert_flux_transformer_checkpoint_to_diffusers``);
tests/test_lora_flow.py checks them against diffusers' models.
"""
from __future__ import annotations

import re

# Single-file module in a FLUX double block -> diffusers' module(s) in transformer_blocks.N.
# A tuple: the fused weight's row blocks in order, each as wide as the block's input, the last
# taking the rest.
FLUX_DOUBLE_BLOCK = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
}
# FLUX single block -> single_transformer_blocks.N.
FLUX_SINGLE_BLOCK = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": "proj_out",
    "modulation.lin": "norm.linear",
}
# SD3 joint block -> transformer_blocks.N.
SD3_JOINT_BLOCK = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),  # SD 3.5 medium
    "x_block.attn.proj": "attn.to_out.0",
    "x_block.attn2.proj": "attn2.to_out.0",
    "context_block.attn.proj": "attn.to_add_out",
    "x_block.mlp.fc1": "ff.net.0.proj",
    "x_block.mlp.fc2": "ff.net.2",
    "context_block.mlp.fc1": "ff_context.net.0.proj",
    "context_block.mlp.fc2": "ff_context.net.2",
    "x_block.adaLN_modulation.1": "norm1.linear",
    "context_block.adaLN_modulation.1": "norm1_context.linear",
}
# Outside the blocks (the two families' single-file names do not overlap).
TOP_LEVEL = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "x_embedder.proj": "pos_embed.proj",
    "context_embedder": "context_embedder",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "final_layer.linear": "proj_out",
    "final_layer.adaLN_modulation.1": "norm_out.linear",  # (shift, scale) -> diffusers' (scale, shift)
}
_BLOCKS = (
    (re.compile(r"double_blocks\.(\d+)\.(.+)"), "transformer_blocks", FLUX_DOUBLE_BLOCK),
    (re.compile(r"single_blocks\.(\d+)\.(.+)"), "single_transformer_blocks", FLUX_SINGLE_BLOCK),
    (re.compile(r"joint_blocks\.(\d+)\.(.+)"), "transformer_blocks", SD3_JOINT_BLOCK),
)
TRANSFORMER_ROOTS = ("double_blocks.", "single_blocks.", "joint_blocks.", "transformer_blocks.",
                     "single_transformer_blocks.")


def is_flow_checkpoint(keys) -> bool:
    return any(k.startswith(("model.diffusion_model.double_blocks.", "model.diffusion_model.joint_blocks."))
               for k in keys)


def _halves_swapped(module: str, shape: tuple[int, ...]) -> bool:
    """The AdaLN layers that give only (shift, scale), 2 x the input width: the final layer's
    and the text stream's in SD3's last block (which does no MLP on the text)."""
    adaptive = module == "final_layer.adaLN_modulation.1" or module.endswith("context_block.adaLN_modulation.1")
    return adaptive and shape[0] == 2 * shape[1]


def diffusers_aliases(module: str, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, int] | None, bool]]:
    """A single-file transformer module (without ``.weight``) of a weight of ``shape`` ->
    [(diffusers' module name, rows of the weight it changes or None for all, halves swapped)]."""
    for pattern, diffusers_block, parts in _BLOCKS:
        if m := pattern.fullmatch(module):
            prefix, names = f"{diffusers_block}.{m[1]}.", parts.get(m[2])
            break
    else:
        prefix, names = "", TOP_LEVEL.get(module)
    if names is None:
        return []
    swapped = _halves_swapped(module, shape)
    if isinstance(names, str):
        return [(prefix + names, None, swapped)]
    width = shape[1]  # each of q, k, v is as wide as the block's input
    out = []
    for index, name in enumerate(names):
        end = (index + 1) * width if index < len(names) - 1 else shape[0]
        out.append((prefix + name, (index * width, end), False))
    return out
