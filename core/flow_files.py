"""SD3 / SD 3.5 and FLUX.1 files, in the layouts they are released in, -> the normalised layout.

The normalised layout is one dict with the prefixes ComfyUI's own SD3 single files use:
``model.diffusion_model.`` (the transformer's single-file keys), ``first_stage_model.`` (the ldm
VAE keys), ``text_encoders.{clip_l,clip_g}.transformer.text_model.*`` (+ ``text_projection``)
and ``text_encoders.t5xxl.transformer.*`` (transformers' ``T5EncoderModel`` keys).

What reaches it here:

- single files (``normalise_flow_keys``): BFL's bare transformer (``double_blocks.0...``) and
  autoencoder (``ae.safetensors``: bare ``encoder.*``/``decoder.*``), ComfyUI/Forge checkpoints
  (VAE under ``first_stage_model.`` or ``vae.``, CLIP with or without ``text_model.``), SD3's
  official ``sd3_medium_incl_clips*`` files (ComfyUI's names already);
- fp8 weights (``float8_e4m3fn``/``float8_e5m2``), plain or ComfyUI's "fp8 scaled" (a
  ``scaled_fp8`` marker and a ``<name>.scale_weight`` per weight): upcast on reading;
- separate text encoder and VAE files (``models/text_encoder``, ``models/VAE``), told apart by
  their content (``identify_part``, ``find_parts``, ``part_tensors``);
- diffusers folders of StableDiffusion3Pipeline and FluxPipeline (``read_flow_diffusers_folder``),
  the transformer renamed back through the inverse of diffusers' single-file converters.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

# The module, not its names: core.loading may import this module while it is itself still
# being imported, so its functions are looked up when called.
from core import loading
from core.errors import EngineError
from core.modelfiles import model_files
from core.models import diffusers_names

TRANSFORMER = "model.diffusion_model."
VAE = "first_stage_model."
TEXT_ENCODERS = "text_encoders."
PART_PREFIXES = {
    "clip_l": "text_encoders.clip_l.transformer.",
    "clip_g": "text_encoders.clip_g.transformer.",
    "t5xxl": "text_encoders.t5xxl.transformer.",
    "vae16": VAE,
}
ENCODER_PARTS = ("clip_l", "clip_g", "t5xxl")
CLIP_WIDTHS = {(768, 12): "clip_l", (1280, 32): "clip_g"}  # (width, layers) of the released encoders
TRANSFORMER_BLOCKS = ("joint_blocks.", "double_blocks.")  # SD3's MMDiT, FLUX's transformer
FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
SCALED_FP8_MARKER = "scaled_fp8"
SCALE_WEIGHT = ".scale_weight"
# ComfyUI's fp8 matmuls scale their inputs too; a weight upcast here runs in the compute dtype,
# where inputs need no scale.
SCALE_INPUT = ".scale_input"
TEXT_ENCODER_FOLDER = "models/text_encoder"
VAE_FOLDER = "models/VAE"


# --- fp8 ------------------------------------------------------------------------------------

def _is_fp8_bookkeeping(key: str) -> bool:
    return key == SCALED_FP8_MARKER or key.endswith(("." + SCALED_FP8_MARKER, SCALE_WEIGHT, SCALE_INPUT))


def _scaled(weight: torch.Tensor, scale: torch.Tensor, key: str) -> torch.Tensor:
    """weight * scale in float32: one scale for the tensor, or one per output row."""
    scale = scale.to(torch.float32)
    if scale.numel() == 1:
        return weight.to(torch.float32) * scale.reshape(())
    if weight.ndim and scale.numel() == weight.shape[0]:
        return weight.to(torch.float32) * scale.reshape(-1, *[1] * (weight.ndim - 1))
    raise EngineError(f"{key}: a scale of shape {tuple(scale.shape)} does not fit a weight of shape {tuple(weight.shape)}")


def upcast_fp8(tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """fp8 tensors -> ``dtype``; ComfyUI's scaled weights multiplied by their ``scale_weight``
    first (in float32); the marker and scale entries dropped. Other tensors are passed through
    untouched (still views of the file). bf16 holds every e4m3fn and e5m2 value exactly, so the
    default loses nothing on plain fp8 weights; a scaled weight is rounded once, to ``dtype``."""
    if not any(value.dtype in FP8_DTYPES or _is_fp8_bookkeeping(key) for key, value in tensors.items()):
        return tensors
    out = {}
    for key, value in tensors.items():
        if _is_fp8_bookkeeping(key):
            continue
        scale = tensors.get(key.removesuffix(".weight") + SCALE_WEIGHT) if key.endswith(".weight") else None
        if scale is not None:
            value = _scaled(value, scale, key).to(dtype)
        elif value.dtype in FP8_DTYPES:
            value = value.to(dtype)
        out[key] = value
    return out


# --- single files ---------------------------------------------------------------------------

def is_flow_layout(keys: Iterable[str]) -> bool:
    """Whether a checkpoint's keys are an SD3/FLUX file's: the transformer's blocks (bare or
    under ``model.diffusion_model.``) or ComfyUI's bundled ``text_encoders.``."""
    for key in keys:
        bare = key.removeprefix(TRANSFORMER)
        if bare.startswith(TRANSFORMER_BLOCKS) or key.startswith(TEXT_ENCODERS):
            return True
    return False


def _part_key(part: str, key: str) -> str | None:
    """One key of a part's own tensors (as a separate file or a ``text_encoders.<part>.`` entry
    stores it) -> its normalised key; None for entries the engine has no use for."""
    if key.endswith(("position_ids", "logit_scale")):
        return None
    if part == "vae16":
        return VAE + key
    key = key.removeprefix("transformer.")
    if part == "t5xxl" and key.startswith(("decoder.", "lm_head.")):
        return None  # a whole encoder-decoder T5 file: only its encoder is used
    if part in CLIP_WIDTHS.values() and not key.startswith(("text_model.", "text_projection")):
        key = "text_model." + key  # transformers 5's CLIPTextModel and some merges have no text_model level
    return PART_PREFIXES[part] + key


def _finish_parts(tensors: dict[str, torch.Tensor], label: str) -> dict[str, torch.Tensor]:
    """What only the whole dict can settle: a VAE stored in diffusers' names is renamed, and
    T5's token table takes the ``shared`` name (``encoder.embed_tokens`` is the same tied tensor)."""
    vae = {key[len(VAE):]: value for key, value in tensors.items() if key.startswith(VAE)}
    if any(key.startswith("encoder.down_blocks.") for key in vae):
        try:
            renamed = diffusers_names.vae_state(vae)
        except KeyError as e:
            raise EngineError(f"unknown VAE weight {e.args[0]!r}", label=label) from None
        tensors = {key: value for key, value in tensors.items() if not key.startswith(VAE)}
        tensors.update({VAE + key: value for key, value in renamed.items()})
    t5 = PART_PREFIXES["t5xxl"]
    embed = tensors.pop(t5 + "encoder.embed_tokens.weight", None)
    if embed is not None:
        tensors.setdefault(t5 + "shared.weight", embed)
    return tensors


def normalise_flow_keys(tensors: dict[str, torch.Tensor], dtype: torch.dtype = torch.bfloat16,
                        label: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A released SD3/FLUX single file's tensors -> the normalised layout (module notes), fp8
    weights upcast to ``dtype`` (see ``upcast_fp8``)."""
    tensors = upcast_fp8(tensors, dtype)
    keys = tensors.keys()
    bare_transformer = any(key.startswith(TRANSFORMER_BLOCKS) for key in keys)
    bare_vae = not bare_transformer and "decoder.conv_in.weight" in keys
    out = {}
    for key, value in tensors.items():
        if key.startswith("vae."):
            new = VAE + key[len("vae."):]
        elif key.startswith(TEXT_ENCODERS):
            part, _, rest = key[len(TEXT_ENCODERS):].partition(".")
            new = _part_key(part, rest) if part in ENCODER_PARTS else key
        elif bare_transformer and not key.startswith((TRANSFORMER, VAE)):
            new = TRANSFORMER + key
        elif bare_vae:
            new = VAE + key
        else:
            new = key
        if new is not None:
            out[new] = value
    return _finish_parts(out, label)


# --- separate text encoder and VAE files ------------------------------------------------------

def identify_part(shapes: dict[str, tuple], file_name: str = "") -> str | None:
    """"clip_l", "clip_g", "t5xxl" or "vae16" for a separate encoder or VAE file's key -> shape
    table (with or without ``transformer.``/``text_model.`` levels), else None. By content:
    T5 by its blocks, CLIP by width and depth, the VAE by its 16 latent channels. A CLIP tower
    of another size (a fine-tune's, a test's) is told by its file name (clip_l / clip_g), as
    ComfyUI's and Forge's folders name them."""
    bare = {}
    for key, shape in shapes.items():
        for prefix in (VAE, "vae.", "transformer.", "text_model."):
            key = key.removeprefix(prefix)
        bare[key] = tuple(shape)
    if "encoder.block.0.layer.0.SelfAttention.q.weight" in bare:
        return "t5xxl"
    decoder_in = bare.get("decoder.conv_in.weight")
    if decoder_in is not None:
        return "vae16" if len(decoder_in) == 4 and decoder_in[1] == 16 else None
    tokens = bare.get("embeddings.token_embedding.weight")
    if tokens is not None and len(tokens) == 2:
        layers = len({m[1] for key in bare if (m := re.match(r"encoder\.layers\.(\d+)\.", key))})
        named = [part for part in CLIP_WIDTHS.values() if part in file_name.lower()]
        return CLIP_WIDTHS.get((tokens[1], layers)) or (named[0] if len(named) == 1 else None)
    return None


def part_tensors(
    path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16, shapes_only: bool = False,
) -> tuple[str, dict[str, torch.Tensor]]:
    """A separate encoder/VAE file -> (its part name, its tensors under the normalised prefix),
    fp8 upcast to ``dtype`` (``shapes_only``: meta tensors from the header); EngineError naming
    the file when it is none of the parts."""
    path = Path(path)
    tensors = upcast_fp8(loading.read_tensor_file(path, shapes_only)[0], dtype)
    part = identify_part({key: tuple(value.shape) for key, value in tensors.items()}, path.name)
    if part is None:
        raise EngineError("not a CLIP-L, CLIP-G, T5-XXL or 16-channel VAE file", label=path.name)
    return part, _part_tensors(part, tensors, path.name)


def _part_tensors(part: str, tensors: dict[str, torch.Tensor], label: str) -> dict[str, torch.Tensor]:
    if part == "vae16":  # a VAE inside a whole checkpoint's names, or bare
        tensors = {key.removeprefix(VAE).removeprefix("vae."): value for key, value in tensors.items()}
    out = {new: value for key, value in tensors.items() if (new := _part_key(part, key)) is not None}
    return _finish_parts(out, label)


def _is_fp8_file(header: dict) -> bool:
    return any(isinstance(info, dict) and str(info.get("dtype", "")).startswith("F8") for info in header.values())


def find_parts(folders: Iterable[str | os.PathLike], needed: Iterable[str]) -> dict[str, Path]:
    """The file under ``folders`` that holds each needed part, chosen by content (headers only
    are read), not by name; where several hold one, a 16/32-bit file before an fp8 one, then
    the first path in order. Parts no file holds are left out."""
    needed = set(needed)
    choices: dict[str, tuple[bool, str, Path]] = {}
    for folder in folders:
        for path in model_files(folder, (".safetensors",)):
            header = loading.safetensors_header(path)
            shapes = {key: info["shape"] for key, info in header.items() if key != "__metadata__"}
            part = identify_part(shapes, path.name) if shapes else None
            if part in needed:
                rank = (_is_fp8_file(header), str(path), path)
                if part not in choices or rank[:2] < choices[part][:2]:
                    choices[part] = rank
    return {part: choice[2] for part, choice in choices.items()}


def _names(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def missing_parts_message(label: str, missing: Iterable[str]) -> str:
    """What to do when a file lacks parts, e.g. "this FLUX file has no text encoders: put t5xxl
    and clip_l in models/text_encoder"."""
    missing = list(missing)
    encoders = [part for part in missing if part != "vae16"]
    lacks, fixes = [], []
    if encoders:
        lacks.append("text encoders" if len(encoders) > 1 else "text encoder")
        fixes.append(f"put {_names(encoders)} in {TEXT_ENCODER_FOLDER}")
    if "vae16" in missing:
        lacks.append("VAE")
        fixes.append(f"put the {label} VAE in {VAE_FOLDER}")
    return f"this {label} file has no {' or '.join(lacks)}: {'; '.join(fixes)}"


# --- diffusers folders ------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockNames:
    """One numbered block family of a diffusers transformer and its single-file names: renamed
    modules (or whole keys where the parameter's name changes too) and fused projections
    (single-file module -> the diffusers modules whose rows it stacks, in order)."""

    diffusers: str
    single: str
    renames: dict[str, str]
    fused: dict[str, tuple[str, ...]] = field(default_factory=dict)


SD3_TOP = {
    "pos_embed.pos_embed": "pos_embed",
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}


def joint_attention_names(streams: tuple[str, str], attention: str, mlp: tuple[str, str], qk_norms: tuple[str, str],
                          modulation: str) -> tuple[dict, dict]:
    """The names diffusers gives the joint-attention blocks of both families (SD3's joint
    blocks, FLUX's double blocks) -> the single file's: each stream's q/k/v (stacked into one
    ``qkv``), q/k norm scales, output projection, MLP and adaLN modulation; the picture stream
    first, then the text's (diffusers' ``add_*``/``*_added_*``/``*_context``). The other
    arguments are the single file's names with {} where the stream's name goes (the q/k norms
    as whole keys: FLUX calls their parameter ``scale``)."""
    diffusers_streams = (
        ("attn.to_out.0", "ff", "norm1", ("attn.norm_q.weight", "attn.norm_k.weight"),
         ("attn.to_q", "attn.to_k", "attn.to_v")),
        ("attn.to_add_out", "ff_context", "norm1_context", ("attn.norm_added_q.weight", "attn.norm_added_k.weight"),
         ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")),
    )
    renames, fused = {}, {}
    for stream, (projection, feed_forward, norm, (norm_q, norm_k), qkv) in zip(streams, diffusers_streams):
        renames[projection] = attention.format(stream) + ".proj"
        renames[feed_forward + ".net.0.proj"] = mlp[0].format(stream)
        renames[feed_forward + ".net.2"] = mlp[1].format(stream)
        renames[norm + ".linear"] = modulation.format(stream)
        renames[norm_q] = qk_norms[0].format(stream)
        renames[norm_k] = qk_norms[1].format(stream)
        fused[attention.format(stream) + ".qkv"] = qkv
    return renames, fused


SD3_JOINT_RENAMES, SD3_JOINT_FUSED = joint_attention_names(
    ("x_block", "context_block"), "{}.attn", ("{}.mlp.fc1", "{}.mlp.fc2"),
    ("{}.attn.ln_q.weight", "{}.attn.ln_k.weight"), "{}.adaLN_modulation.1",
)
SD3_BLOCKS = BlockNames("transformer_blocks", "joint_blocks", SD3_JOINT_RENAMES | {
    # 3.5 medium's second self-attention over the picture tokens.
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj",
}, SD3_JOINT_FUSED | {"x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v")})
FLUX_TOP = {
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "context_embedder": "txt_in",
    "x_embedder": "img_in",
    "proj_out": "final_layer.linear",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
}
FLUX_DOUBLE_BLOCKS = BlockNames("transformer_blocks", "double_blocks", *joint_attention_names(
    ("img", "txt"), "{}_attn", ("{}_mlp.0", "{}_mlp.2"),
    ("{}_attn.norm.query_norm.scale", "{}_attn.norm.key_norm.scale"), "{}_mod.lin",
))
FLUX_SINGLE_BLOCKS = BlockNames("single_transformer_blocks", "single_blocks", {
    "norm.linear": "modulation.lin",
    "attn.norm_q.weight": "norm.query_norm.scale",
    "attn.norm_k.weight": "norm.key_norm.scale",
    "proj_out": "linear2",
}, {
    # One input projection for the attention and the MLP beside it.
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
})


def _renamed(rest: str, renames: dict[str, str]) -> str | None:
    for old, new in renames.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return None


def _single_file_names(state: dict[str, torch.Tensor], top: dict[str, str], blocks: tuple[BlockNames, ...],
                       label: str) -> dict[str, torch.Tensor]:
    """A diffusers transformer state -> single-file keys (without ``model.diffusion_model.``):
    fused projections stacked, every other key renamed; a key no table names is refused."""
    left = dict(state)
    out = {}
    for table in blocks:
        numbers = sorted({int(m[1]) for key in state if (m := re.match(rf"{table.diffusers}\.(\d+)\.", key))})
        for number in numbers:
            source, target = f"{table.diffusers}.{number}.", f"{table.single}.{number}."
            for fused, parts in table.fused.items():
                for param in ("weight", "bias"):
                    names = [f"{source}{part}.{param}" for part in parts]
                    found = [name in left for name in names]
                    if any(found) and not all(found):
                        raise EngineError(f"incomplete transformer: {names[found.index(False)]} missing", label=label)
                    if all(found):
                        out[f"{target}{fused}.{param}"] = torch.cat([left.pop(name) for name in names])
    for key, value in left.items():
        new = None
        for table in blocks:
            if m := re.match(rf"{table.diffusers}\.(\d+)\.(.*)", key):
                renamed = _renamed(m[2], table.renames)
                new = f"{table.single}.{m[1]}.{renamed}" if renamed is not None else None
                break
        else:
            new = _renamed(key, top)
        if new is None:
            raise EngineError(f"unknown transformer weight {key!r}", label=label)
        out[new] = value
    return out


def _swap_halves(tensors: dict[str, torch.Tensor], module: str) -> None:
    """diffusers' continuous adaLN reads (scale, shift); the single files store (shift, scale)."""
    for param in ("weight", "bias"):
        key = f"{module}.{param}"
        if key in tensors:
            first, second = tensors[key].chunk(2, dim=0)
            tensors[key] = torch.cat([second, first])


def sd3_transformer_from_diffusers(state: dict[str, torch.Tensor], label: str = "transformer") -> dict[str, torch.Tensor]:
    """An SD3Transformer2DModel state -> the MMDiT's single-file keys."""
    out = _single_file_names(state, SD3_TOP, (SD3_BLOCKS,), label)
    _swap_halves(out, "final_layer.adaLN_modulation.1")
    # The last block's text stream is pre-only (no output projection): diffusers gives it the
    # continuous adaLN with the halves the other way round.
    blocks = {int(m[1]) for key in out if (m := re.match(r"joint_blocks\.(\d+)\.", key))}
    for number in blocks:
        if f"joint_blocks.{number}.context_block.attn.proj.weight" not in out:
            _swap_halves(out, f"joint_blocks.{number}.context_block.adaLN_modulation.1")
    return out


def flux_transformer_from_diffusers(state: dict[str, torch.Tensor], label: str = "transformer") -> dict[str, torch.Tensor]:
    """A FluxTransformer2DModel state -> FLUX's single-file (BFL) keys."""
    out = _single_file_names(state, FLUX_TOP, (FLUX_DOUBLE_BLOCKS, FLUX_SINGLE_BLOCKS), label)
    _swap_halves(out, "final_layer.adaLN_modulation.1")
    return out


@dataclass(frozen=True)
class FlowPipeline:
    family: str
    transformer: Callable[[dict, str], dict]  # diffusers' transformer names -> the single file's
    encoders: dict[str, str]  # sub-folder -> part


FLOW_PIPELINES = {
    "StableDiffusion3": FlowPipeline("sd3", sd3_transformer_from_diffusers,
                                     {"text_encoder": "clip_l", "text_encoder_2": "clip_g", "text_encoder_3": "t5xxl"}),
    "Flux": FlowPipeline("flux", flux_transformer_from_diffusers, {"text_encoder": "clip_l", "text_encoder_2": "t5xxl"}),
}
WEIGHT_STEMS = ("diffusion_pytorch_model", "model", "pytorch_model")
SCHEDULER_FIELDS = {
    "shift": "sigma_shift", "base_shift": "base_shift", "max_shift": "max_shift",
    "base_image_seq_len": "base_image_seq_len", "max_image_seq_len": "max_image_seq_len",
}


def _json_table(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _read_shards(folder: Path, index: Path) -> dict[str, torch.Tensor]:
    """The files an ``*.index.json`` lists (names inside ``folder`` only), read and merged."""
    weight_map = _json_table(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise EngineError("shard index without a weight_map", label=str(index))
    tensors = {}
    for name in sorted(set(map(str, weight_map.values()))):
        if Path(name).name != name or name in (".", ".."):
            raise EngineError(f"shard {name[:200]!r} is not a file in the model's folder", label=str(index))
        if not (folder / name).is_file():
            raise EngineError(f"shard {name!r} is missing", label=str(folder))
        tensors.update(loading.read_tensor_file(folder / name)[0])
    return tensors


def _read_component(folder: Path) -> dict[str, torch.Tensor] | None:
    """One diffusers component's weights: a single file or shards with their index, the plain
    names before the fp16 variants, safetensors before pickles; None when the folder has none."""
    if not folder.is_dir():
        return None
    for variant in ("", ".fp16"):
        for suffix in (".safetensors", ".bin"):
            for stem in WEIGHT_STEMS:
                single = folder / f"{stem}{variant}{suffix}"
                if single.is_file():
                    return loading.read_tensor_file(single)[0]
                index = folder / f"{stem}{variant}{suffix}.index.json"
                if index.is_file():
                    return _read_shards(folder, index)
    return None


def is_flow_diffusers_folder(folder: Path) -> bool:
    """Whether a diffusers folder's model_index.json names an SD3 or FLUX pipeline."""
    class_name = str(_json_table(Path(folder) / "model_index.json").get("_class_name", ""))
    return class_name.startswith(tuple(FLOW_PIPELINES))


def _flow_pipeline(folder: Path) -> FlowPipeline:
    class_name = str(_json_table(folder / "model_index.json").get("_class_name", ""))
    for prefix, pipeline in FLOW_PIPELINES.items():
        if class_name.startswith(prefix):
            return pipeline
    raise EngineError(f"not an SD3 or FLUX diffusers folder (model_index.json names {class_name[:80]!r})", label=str(folder))


def _flow_metadata(folder: Path, pipeline: FlowPipeline, transformer: dict[str, torch.Tensor] | None) -> dict[str, str]:
    metadata = {"flow_family": pipeline.family}
    if pipeline.family == "flux" and transformer is not None:
        # dev is guidance-distilled (a guidance embedder); schnell has none.
        metadata["flux_kind"] = "dev" if "guidance_in.in_layer.weight" in transformer else "schnell"
    vae_config = _json_table(folder / "vae" / "config.json")
    for field_name, key in (("scaling_factor", "latent_scale_factor"), ("shift_factor", "latent_shift_factor")):
        if isinstance(vae_config.get(field_name), (int, float)):
            metadata[key] = str(vae_config[field_name])
    scheduler = _json_table(folder / "scheduler" / "scheduler_config.json")
    for field_name, key in SCHEDULER_FIELDS.items():
        if isinstance(scheduler.get(field_name), (int, float)):
            metadata[key] = str(scheduler[field_name])
    if "use_dynamic_shifting" in scheduler:
        metadata["dynamic_shifting"] = "1" if scheduler["use_dynamic_shifting"] else "0"
    return metadata


def read_flow_diffusers_folder(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A StableDiffusion3Pipeline / FluxPipeline folder -> (its tensors in the normalised layout,
    metadata). Every component is optional (a folder without text encoders is read as a file
    without them is). Metadata: ``flow_family`` (sd3/flux), ``flux_kind`` (dev/schnell, from the
    transformer's weights), ``latent_scale_factor``/``latent_shift_factor`` (vae/config.json),
    ``sigma_shift``, ``dynamic_shifting`` (1/0), ``base_shift``, ``max_shift``,
    ``base_image_seq_len``, ``max_image_seq_len`` (scheduler/scheduler_config.json), each where given."""
    folder = Path(folder)
    pipeline = _flow_pipeline(folder)
    out: dict[str, torch.Tensor] = {}
    transformer = _read_component(folder / "transformer")
    if transformer is not None:
        transformer = pipeline.transformer(transformer, f"{folder.name}/transformer")
        out.update({TRANSFORMER + key: value for key, value in transformer.items()})
    vae = _read_component(folder / "vae")
    if vae is not None:
        out.update(_part_tensors("vae16", vae, f"{folder.name}/vae"))
    for subfolder, part in pipeline.encoders.items():
        tensors = _read_component(folder / subfolder)
        if tensors is not None:
            out.update(_part_tensors(part, tensors, f"{folder.name}/{subfolder}"))
    return out, _flow_metadata(folder, pipeline, transformer)
