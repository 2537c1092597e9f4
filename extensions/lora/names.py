"""Which layer a LoRA module patches: every naming scheme in the wild -> one checkpoint key.

LoRA files name the layer they change in one of several ways:

* kohya / A1111 / LyCORIS: ``lora_unet_<path>``, ``lora_te_<path>`` (SDXL: ``lora_te1_``,
  ``lora_te2_``), where ``<path>`` is a module path with ``.`` written as ``_``. For SD 1.x the
  UNet path is the *diffusers* one (``down_blocks_0_attentions_0_proj_in``); for SDXL it is the
  original LDM one (``input_blocks_4_1_proj_in``); some trainers mix them up, so both are
  accepted for every model.
* diffusers / PEFT: dotted module paths under ``unet.``, ``text_encoder.``, ``text_encoder_2.``
  (or ``base_model.model.`` for a bare PEFT save).
* ComfyUI-style LDM paths: ``diffusion_model.input_blocks...``.
* SD 3.x / FLUX.1: the same prefixes over the single-file transformer names
  (``lora_unet_double_blocks_0_img_attn_qkv``), or diffusers' names under ``transformer.``
  (``lora_transformer_`` in kohya form); ``lora_te1_`` CLIP-L, ``lora_te2_`` CLIP-G,
  ``lora_te3_`` T5 (FLUX, without CLIP-G: ``lora_te2_`` / ``text_encoder_2.`` too). See
  flow_names.py.

Such a name cannot be parsed back by splitting at ``_`` (``transformer_blocks``, ``to_out_0``),
so the lookup goes the other way: :func:`build_table` starts from the checkpoint's own weight
keys (our module tree mirrors them), derives every name each layer may carry, and maps it to a
:class:`Target` (checkpoint key, shape, component, and for open_clip's fused q/k/v weight the row
range). :func:`canonical_name` brings any module name from a file to the kohya form used as the
table's key.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from core.models import diffusers_names

from .flow_names import TRANSFORMER_ROOTS, diffusers_aliases, is_flow_checkpoint

UNET = "model.diffusion_model."

# Text encoders in checkpoint layouts: (key prefix, layout, component, kohya prefix).
# "hf": transformers CLIPTextModel under "<prefix>text_model."; "open_clip": open_clip's
# transformer with a fused in_proj_weight (SD 2.x, SDXL's second encoder); "t5": transformers
# T5EncoderModel (SD 3.x / FLUX.1).
TEXT_LAYOUTS = (
    ("cond_stage_model.transformer.", "hf", "te", "lora_te_"),
    ("cond_stage_model.model.", "open_clip", "te", "lora_te_"),
    ("conditioner.embedders.0.transformer.", "hf", "te1", "lora_te1_"),
    ("conditioner.embedders.1.model.", "open_clip", "te2", "lora_te2_"),
    ("text_encoders.clip_l.transformer.", "hf", "te1", "lora_te1_"),
    ("text_encoders.clip_g.transformer.", "hf", "te2", "lora_te2_"),
    ("text_encoders.t5xxl.transformer.", "t5", "te3", "lora_te3_"),
)
FLOW_CLIP_G = "text_encoders.clip_g."
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "lora_transformer_")

_RESNET_LDM_TO_DIFFUSERS = {ldm: diff for diff, ldm in diffusers_names.RESNET_PARTS.items()}
_SIMPLE_LDM_TO_DIFFUSERS = {
    "input_blocks.0.0": "conv_in",
    "time_embed.0": "time_embedding.linear_1",
    "time_embed.2": "time_embedding.linear_2",
    "label_emb.0.0": "add_embedding.linear_1",
    "label_emb.0.2": "add_embedding.linear_2",
    "out.0": "conv_norm_out",
    "out.2": "conv_out",
}
_OPEN_CLIP_PARTS = {"attn.out_proj": "self_attn_out_proj", "mlp.c_fc": "mlp_fc1", "mlp.c_proj": "mlp_fc2"}


@dataclass(frozen=True)
class Target:
    """A layer weight a LoRA module changes."""

    key: str  # the weight's key in the single-file checkpoint layout
    shape: tuple[int, ...]  # shape of the part that changes (the row block for a fused weight)
    component: str  # "unet", "te", "te1", "te2" or "te3": which multiplier applies
    rows: tuple[int, int] | None = None  # row range inside a fused q/k/v weight
    halves_swapped: bool = False  # the LoRA's first half of rows is the weight's second (AdaLN shift/scale)

    @property
    def is_unet(self) -> bool:
        return self.component == "unet"


def flat(path: str) -> str:
    return path.replace(".", "_")


def _swap_head(rest: str, mapping: dict[str, str]) -> str | None:
    """Replace the leading dotted part of ``rest`` found in ``mapping`` (longest first)."""
    for old in sorted(mapping, key=len, reverse=True):
        if rest == old or rest.startswith(old + "."):
            return mapping[old] + rest[len(old):]
    return None


def ldm_to_diffusers(path: str, layers: int) -> str | None:
    """An LDM UNet module/parameter path -> the diffusers one (the inverse of
    ``core.models.diffusers_names.unet_key``), or None when diffusers has no such name.

    ``layers``: resnets per down level (SD 1.x: 2)."""
    simple = _swap_head(path, _SIMPLE_LDM_TO_DIFFUSERS)
    if simple is not None:
        return simple
    if m := re.fullmatch(r"input_blocks\.(\d+)\.(\d+)(\..+)?", path):
        index, part, rest = int(m[1]), int(m[2]), (m[3] or "")[1:]
        level, j = divmod(index - 1, layers + 1)
        if j == layers:  # the level's downsampler
            tail = _swap_head(rest, {"op": "conv"}) if part == 0 else None
            return f"down_blocks.{level}.downsamplers.0.{tail}" if tail else None
        if part == 0:
            tail = _swap_head(rest, _RESNET_LDM_TO_DIFFUSERS)
            return f"down_blocks.{level}.resnets.{j}.{tail}" if tail else None
        return f"down_blocks.{level}.attentions.{j}.{rest}" if part == 1 and rest else None
    if m := re.fullmatch(r"middle_block\.(\d+)\.(.+)", path):
        part, rest = int(m[1]), m[2]
        if part == 1:
            return f"mid_block.attentions.0.{rest}"
        tail = _swap_head(rest, _RESNET_LDM_TO_DIFFUSERS)
        return f"mid_block.resnets.{part // 2}.{tail}" if tail and part in (0, 2) else None
    if m := re.fullmatch(r"output_blocks\.(\d+)\.(\d+)\.(.+)", path):
        index, part, rest = int(m[1]), int(m[2]), m[3]
        level, j = divmod(index, layers + 1)
        if part == 0:
            tail = _swap_head(rest, _RESNET_LDM_TO_DIFFUSERS)
            return f"up_blocks.{level}.resnets.{j}.{tail}" if tail else None
        if rest == "conv" or rest.startswith("conv."):  # an Upsample (at .1 without attention, else .2)
            return f"up_blocks.{level}.upsamplers.0.{rest}"
        return f"up_blocks.{level}.attentions.{j}.{rest}" if part == 1 else None
    return None


def unet_layers(keys) -> int:
    """Resnets per down level, read from where the first downsampler sits."""
    ops = sorted(int(m[1]) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.0\.op\.", k)))
    if ops:
        return ops[0] - 1
    blocks = [int(m[1]) for k in keys if (m := re.match(r"input_blocks\.(\d+)\.", k))]
    return max(blocks, default=1)


def unet_diffusers_names(ldm_keys) -> dict[str, str]:
    """LDM UNet parameter keys (without ``model.diffusion_model.``) -> diffusers keys, keeping
    only those that core's diffusers->LDM table maps back to the same key."""
    ldm_keys = list(ldm_keys)
    layers = unet_layers(ldm_keys)
    candidates = {k: ldm_to_diffusers(k, layers) for k in ldm_keys}
    diffusers_keys = [d for d in candidates.values() if d]
    out = {}
    for ldm, diff in candidates.items():
        if diff is None:
            continue
        try:
            back = diffusers_names.unet_key(diff, diffusers_keys)
        except KeyError:
            continue
        if back == ldm:
            out[ldm] = diff
    return out


def _is_layer_weight(key: str, shape) -> bool:
    return key.endswith(".weight") and len(shape) in (2, 3, 4) and "embedding" not in key


def build_table(shapes: dict[str, tuple[int, ...]]) -> dict[str, Target]:
    """Checkpoint key -> shape (any SD layout) => kohya-style module name -> Target.

    Holds every Linear/Conv weight of the UNet and the text encoder(s), under every name a LoRA
    file may give it (after :func:`canonical_name`)."""
    table: dict[str, Target] = {}
    unet = {k[len(UNET):]: tuple(s) for k, s in shapes.items() if k.startswith(UNET)}
    flow = is_flow_checkpoint(shapes)
    diffusers = {} if flow else unet_diffusers_names(unet)
    for key, shape in unet.items():
        if not _is_layer_weight(key, shape):
            continue
        target = Target(UNET + key, shape, "unet")
        module = key[: -len(".weight")]
        table["lora_unet_" + flat(module)] = target
        if key in diffusers:
            table["lora_unet_" + flat(diffusers[key][: -len(".weight")])] = target
        for alias, rows, swapped in diffusers_aliases(module, shape) if flow else ():
            part = shape if rows is None else (rows[1] - rows[0], *shape[1:])
            table["lora_unet_" + flat(alias)] = Target(UNET + key, part, "unet", rows, swapped)
    # FLUX has no CLIP-G: its T5 is the second text encoder (diffusers' text_encoder_2,
    # OneTrainer's lora_te2_) as well as kohya's lora_te3_.
    t5_names = ("lora_te3_",) if any(k.startswith(FLOW_CLIP_G) for k in shapes) else ("lora_te3_", "lora_te2_")
    for prefix, layout, component, kohya in TEXT_LAYOUTS:
        for key, shape in shapes.items():
            if not key.startswith(prefix):
                continue
            rest, shape = key[len(prefix):], tuple(shape)
            if layout == "hf" and _is_layer_weight(key, shape) and rest.startswith("text_model."):
                table[kohya + flat(rest[: -len(".weight")])] = Target(key, shape, component)
            elif layout == "open_clip" and (m := re.fullmatch(r"transformer\.resblocks\.(\d+)\.(.+)", rest)):
                layer = f"{kohya}text_model_encoder_layers_{m[1]}_"
                if m[2] == "attn.in_proj_weight":
                    width = shape[0] // 3
                    for i, part in enumerate(("q", "k", "v")):
                        rows = (i * width, (i + 1) * width)
                        table[f"{layer}self_attn_{part}_proj"] = Target(key, (width, *shape[1:]), component, rows)
                elif m[2].endswith(".weight") and (name := _OPEN_CLIP_PARTS.get(m[2][: -len(".weight")])):
                    table[layer + name] = Target(key, shape, component)
            elif layout == "t5" and _is_t5_layer(rest, shape):
                for name in t5_names:
                    table[name + flat(rest[: -len(".weight")])] = Target(key, shape, component)
    return table


def _is_t5_layer(rest: str, shape) -> bool:
    """A Linear of a T5 encoder block (not the embedding tables, not the layer norms)."""
    return rest.startswith("encoder.block.") and len(shape) == 2 and not rest.endswith("relative_attention_bias.weight")


def has_two_text_encoders(keys) -> bool:
    """Whether the first text encoder is ``lora_te1_``: SDXL's, and CLIP-L of SD 3.x and FLUX.1
    (kohya numbers it 1 there even when T5 is its only companion)."""
    return any(k.startswith(("conditioner.embedders.1.", "text_encoders.")) for k in keys)


_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.", "conv_in", "conv_out", "conv_norm_out", "time_embedding.",
               "add_embedding.", "input_blocks.", "middle_block.", "output_blocks.") + TRANSFORMER_ROOTS
# How a text encoder's layer path starts without CLIP's text_model. level: T5's blocks.
_TEXT_ROOTS = ("text_model", "encoder_block_", "encoder.block.")


def canonical_name(name: str, two_text_encoders: bool = False) -> str:
    """Any module name found in a LoRA file -> the kohya form used by :func:`build_table`."""
    te = "lora_te1_" if two_text_encoders else "lora_te_"
    if name.startswith(KOHYA_PREFIXES):
        _, part, rest = name.split("_", 2)
        prefix = "lora_unet_" if part == "transformer" else f"lora_{part}_"  # diffusers' transformer
        if prefix != "lora_unet_" and not rest.startswith(_TEXT_ROOTS):
            rest = "text_model_" + rest  # text encoders saved without transformers 4's text_model level
        return prefix + rest
    name = name.removeprefix("base_model.model.")
    for dotted, prefix in (("unet.", "lora_unet_"), ("transformer.", "lora_unet_"),
                           ("model.diffusion_model.", "lora_unet_"), ("diffusion_model.", "lora_unet_"),
                           ("text_encoder_3.", "lora_te3_"), ("text_encoder_2.", "lora_te2_"),
                           ("text_encoder.", te), ("cond_stage_model.transformer.", te)):
        if name.startswith(dotted):
            rest = name[len(dotted):]
            if prefix != "lora_unet_" and not rest.startswith(_TEXT_ROOTS):
                rest = "text_model." + rest
            return prefix + flat(rest)
    if name.startswith(_UNET_ROOTS):
        return "lora_unet_" + flat(name)
    if name.startswith("text_model."):
        return te + flat(name)
    return flat(name)
