"""Checkpoint files -> a ready ``LatentDiffusion``.

Three sources end in the same model: single-file ``.safetensors`` (memory-mapped, no extra
copy), ``.ckpt``/``.pt`` (only through ``torch.load(weights_only=True)``: a pickle that would
run code is refused), and diffusers folders (``model_index.json`` with unet/ vae/ text_encoder/
and, for SDXL, text_encoder_2/). Folders are renamed into the single-file layout first, so one
detection and one builder serve every source. The model is built on the meta device and the
file's tensors are assigned into it, so peak memory is about one copy of the weights.

What the weights cannot tell, in order of precedence:

1. ``load_model(..., prediction="eps" | "v")``: the caller's (the user's) choice;
2. a sidecar ``<checkpoint>.yaml`` beside the file (``parameterization: "v"`` in ldm configs,
   ``VScaling`` in sgm ones), as A1111 reads it;
3. the file's metadata (``modelspec.prediction_type``; a diffusers folder's scheduler config,
   which also gives ``rescale_betas_zero_snr``);
4. SD 2.x only: A1111's test forward pass (``looks_like_v_prediction``);
5. the family's default (epsilon; v for the x4 upscaler).
"""
from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import pickle
import re
import struct
import zipfile
from pathlib import Path
from typing import Callable

import torch

from core.errors import NOT_FOUND, EngineError
from core.modelfiles import has_suffix, is_safetensors
from core.models import diffusers_names
from core.models.clip import FrozenOpenCLIPEmbedder
from core.models.detection import FLOW_TEXT, SDXL_EMBEDDER, TEXT, UNET, VAE, ModelSpec, detect, detector_for
from core.models.normalization import LOW_PRECISION, float32_parameter_names
from core.models.stable_diffusion import LatentDiffusion

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
SAFETENSORS_ITEMSIZES = {name: torch.empty((), dtype=dtype).element_size() for name, dtype in SAFETENSORS_DTYPES.items()}
MAX_SAFETENSORS_HEADER = 100_000_000  # bytes of JSON; the largest real checkpoints need a few MB
# Keys a checkpoint may carry that the engine has no use for: training state, EMA shadows,
# the DDPM schedule (recomputed), CLIP's position_ids (always arange).
IGNORED_PREFIXES = ("model_ema.", "loss.", "first_stage_model.loss.", "lvlb_weights")
SCHEDULE_BUFFERS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "model.alphas_cumprod",
}


def read_safetensors_header(path: Path) -> tuple[dict, int]:
    """A .safetensors file's header table (tensor entries and ``__metadata__``) and its length
    in bytes, reading nothing else; EngineError naming the file when it is not one.

    Every entry is checked against the file before anything maps it (a known dtype, a shape of
    whole numbers >= 0, offsets inside the data that hold exactly that many bytes), so neither
    this module nor safetensors or torch ever sees a header that would make them fail."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise EngineError(f"not a safetensors file (only {size} bytes)", label=path.name)
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, MAX_SAFETENSORS_HEADER):
            raise EngineError(f"corrupt or truncated safetensors file (header of {header_len} bytes in a {size}-byte file)", label=path.name)
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise EngineError("corrupt safetensors file (header is not valid JSON)", label=path.name) from None
    if not isinstance(header, dict):
        raise EngineError("corrupt safetensors file (header is not a table)", label=path.name)
    data_size = size - 8 - header_len
    for key, info in header.items():
        if key == "__metadata__":
            if info is not None and not isinstance(info, dict):
                raise EngineError("corrupt safetensors file (__metadata__ is not a table)", label=path.name)
            continue
        problem = _safetensors_entry_problem(info, data_size)
        if problem:
            raise EngineError(f"corrupt safetensors file (tensor {key[:200]!r}: {problem})", label=path.name)
    return header, header_len


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _safetensors_entry_problem(info, data_size: int) -> str | None:
    """Why a header entry cannot describe a tensor of a file with ``data_size`` data bytes."""
    if not isinstance(info, dict):
        return "the entry is not a table"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        return f"unknown dtype {str(dtype)[:40]!r} (known: {', '.join(SAFETENSORS_DTYPES)})"
    if not isinstance(shape, list) or not all(_whole(s) and s >= 0 for s in shape):
        return f"shape {str(shape)[:80]} is not a list of whole numbers >= 0"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_whole(o) for o in offsets):
        return f"data_offsets {str(offsets)[:80]} is not a pair of whole numbers"
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        return f"bytes {begin}-{end} are outside the file's {data_size} data bytes (truncated?)"
    count = math.prod(shape)
    if end - begin != count * SAFETENSORS_ITEMSIZES[dtype]:
        return f"shape {shape} of {dtype} needs {count * SAFETENSORS_ITEMSIZES[dtype]} bytes, the offsets give {end - begin}"
    return None


def safetensors_header(path: str | os.PathLike) -> dict:
    """The header table as :func:`read_safetensors_header` reads it, or {} for anything that is
    not a readable .safetensors file (for listings that skip what they cannot read)."""
    path = Path(path)
    if not is_safetensors(path):
        return {}
    try:
        return read_safetensors_header(path)[0]
    except (OSError, EngineError):
        return {}


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors that view a private (copy-on-write) memory map of the file, and the metadata.

    Writing into a tensor (a merged LoRA, say) never touches the file on disk."""
    header, header_len = read_safetensors_header(path)
    metadata = header.pop("__metadata__", None) or {}
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        data_start = 8 + header_len
        data_size = size - data_start
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
    tensors = {}
    for key, info in header.items():
        # The header was checked as read; the file may have shrunk since, so the bounds again.
        dtype, shape = SAFETENSORS_DTYPES[info["dtype"]], info["shape"]
        begin, end = info["data_offsets"]
        count, itemsize = math.prod(shape), SAFETENSORS_ITEMSIZES[info["dtype"]]
        if end > data_size:
            raise EngineError(
                f"{path.name}: truncated or corrupt safetensors file ({key!r} needs bytes {begin}-{end}, "
                f"the file holds {data_size})"
            )
        offset = data_start + begin
        if count == 0:
            tensors[key] = torch.empty(shape, dtype=dtype)
        elif offset % itemsize:
            # Misaligned data cannot be viewed in place; copy this one tensor.
            tensors[key] = torch.frombuffer(bytearray(mapped[offset:offset + end - begin]), dtype=dtype).reshape(shape)
        else:
            tensors[key] = torch.frombuffer(mapped, dtype=dtype, count=count, offset=offset).reshape(shape)
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def read_pickle_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """``.ckpt``/``.pt``/``.bin`` through torch's restricted unpickler only (never arbitrary code)."""
    try:
        mmap_ok = zipfile.is_zipfile(path)
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap_ok)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsupported content"
        raise EngineError(f"refused to load: the file holds objects other than tensors ({first})", label=path.name) from None
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as e:
        raise EngineError(f"cannot read checkpoint ({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})", label=path.name) from None
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise EngineError(f"not a checkpoint (holds a {type(data).__name__}, not a table of tensors)", label=path.name)
    return {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}


def read_safetensors_shapes(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The file's tensors as meta tensors (dtype and shape, no data) and its metadata, from the
    header alone: all that detection needs (read_spec), without touching an fp8 file's weights."""
    header, _ = read_safetensors_header(path)
    metadata = header.pop("__metadata__", None) or {}
    tensors = {key: torch.empty(info["shape"], dtype=SAFETENSORS_DTYPES[info["dtype"]], device="meta")
               for key, info in header.items()}
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def read_tensor_file(path: Path, shapes_only: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A file's tensors and metadata; ``shapes_only``: a .safetensors file as meta tensors."""
    if is_safetensors(path):
        return read_safetensors_shapes(path) if shapes_only else read_safetensors(path)
    return read_pickle_checkpoint(path), {}


def _read_diffusers_part(folder: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    for name in names:
        if (folder / name).is_file():
            return read_tensor_file(folder / name)[0]
    raise EngineError(f"no weights file ({' or '.join(names)})", label=str(folder))


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _has_weights(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / name).is_file() for name in names)


# The plain names first, then the fp16 "variant" files many SDXL downloads hold instead.
TEXT_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.fp16.safetensors", "pytorch_model.fp16.bin")


def _openclip_from_transformers(text: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers CLIPTextModel(WithProjection) state -> open_clip names (``model.*``):
    q/k/v fused, ``text_projection.weight`` (a Linear, P.T) back to ``text_projection`` (P)."""
    state = {}
    for key, value in text.items():
        new = diffusers_names.text_key(key)
        if new == "text_projection.weight":
            state["text_projection"] = value.t()
        elif not new.endswith("position_ids"):
            state[new] = value
    return FrozenOpenCLIPEmbedder.to_checkpoint(state)


def read_diffusers_folder(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A diffusers pipeline folder, renamed into the single-file layout, and what its configs
    say (prediction type, latent scale, zero-terminal-SNR)."""
    weights = (
        "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
        "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.fp16.bin",
    )
    out: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    unet = _read_diffusers_part(folder / "unet", weights)
    for key, value in unet.items():
        out[UNET + diffusers_names.unet_key(key, unet)] = value
    vae = _read_diffusers_part(folder / "vae", weights)
    for key, value in vae.items():
        new = diffusers_names.vae_key(key, vae)
        if diffusers_names.is_vae_linear_attention(new) and value.ndim == 2:
            value = value[:, :, None, None]
        out[VAE + new] = value
    if "scaling_factor" in (vae_config := _json(folder / "vae" / "config.json")):
        metadata["latent_scale_factor"] = str(vae_config["scaling_factor"])
    for part, config in (("unet", _json(folder / "unet" / "config.json")), ("vae", vae_config)):
        if config.get("norm_num_groups", 32) != 32:
            metadata[f"{part}_norm_groups"] = str(config["norm_num_groups"])

    first = folder / "text_encoder"
    second = folder / "text_encoder_2"
    if _has_weights(second, TEXT_WEIGHTS):
        # SDXL: CLIP-L (absent in the refiner) and OpenCLIP bigG (a CLIPTextModelWithProjection).
        index = 0
        if _has_weights(first, TEXT_WEIGHTS):
            for key, value in _read_diffusers_part(first, TEXT_WEIGHTS).items():
                new = diffusers_names.text_key(key)
                if new.startswith("transformer."):
                    out[f"{SDXL_EMBEDDER}0.transformer.text_model." + new[len("transformer."):]] = value
            index = 1
        bigg = _openclip_from_transformers(_read_diffusers_part(second, TEXT_WEIGHTS))
        out.update({f"{SDXL_EMBEDDER}{index}." + k: v for k, v in bigg.items()})
    else:
        text = _read_diffusers_part(first, TEXT_WEIGHTS)
        if _json(first / "config.json").get("hidden_act") == "gelu":
            # SD 2.x / x4: an OpenCLIP ViT-H converted by diffusers, which drops the unused last
            # layer; its last layer is the one SD 2.x reads.
            out.update({"cond_stage_model." + k: v for k, v in _openclip_from_transformers(text).items()})
            metadata["text_layer"] = "last"
        else:
            for key, value in text.items():
                new = diffusers_names.text_key(key)
                if new.startswith("transformer."):
                    out[TEXT + new[len("transformer."):]] = value

    scheduler = _json(folder / "scheduler" / "scheduler_config.json")
    if "prediction_type" in scheduler:
        metadata["prediction"] = "v" if scheduler["prediction_type"] == "v_prediction" else "eps"
        metadata["prediction_source"] = "metadata"
    if scheduler.get("rescale_betas_zero_snr"):
        metadata["zero_terminal_snr"] = "1"
    return out, metadata


def normalise_keys(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fold the usual variants into one layout: drop training/EMA/schedule entries, add the
    ``text_model.`` level where old merges lack it."""
    out = {}
    bare = {"cond_stage_model.transformer.": TEXT, f"{SDXL_EMBEDDER}0.transformer.": f"{SDXL_EMBEDDER}0.transformer.text_model."}
    for key, value in tensors.items():
        if (
            key.startswith(IGNORED_PREFIXES) or key in SCHEDULE_BUFFERS or key.endswith("position_ids")
            or key.startswith(("low_scale_model.", "denoiser."))  # x4 / sgm schedule buffers
        ):
            continue
        for old, new in bare.items():
            if key.startswith(old) and not key.startswith(new):
                key = new + key[len(old):]
        out[key] = value
    return out


def read_checkpoint(
    path: str | os.PathLike, dtype: torch.dtype = torch.float32, shapes_only: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A checkpoint's tensors in the single-file layout, and what its metadata says. SD 3.x and
    FLUX.1 files and folders come in ComfyUI's layout (core/flow_files.py), their fp8 weights
    widened to ``dtype`` (the precision the model will run in) as they are read.
    ``shapes_only``: single .safetensors files as meta tensors, read from their headers."""
    from core import flow_files

    path = Path(path)
    if not path.exists():
        raise EngineError("no such file or folder", kind=NOT_FOUND, label=str(path))
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise EngineError("a folder, but not a diffusers model (no model_index.json)", label=str(path))
        if flow_files.is_flow_diffusers_folder(path):
            return flow_files.read_flow_diffusers_folder(path)
        tensors, metadata = read_diffusers_folder(path)
    elif not has_suffix(path, CHECKPOINT_SUFFIXES):
        raise EngineError(f"unsupported file type {path.suffix!r} (use {', '.join(CHECKPOINT_SUFFIXES)})", label=path.name)
    else:
        tensors, metadata = read_tensor_file(path, shapes_only)
        if flow_files.is_flow_layout(tensors):
            return flow_files.normalise_flow_keys(tensors, dtype=dtype), metadata
        kind = _prediction_name(metadata.get("modelspec.prediction_type", ""))
        if kind:
            metadata["prediction"], metadata["prediction_source"] = kind, "metadata"
    return normalise_keys(tensors), metadata


def add_separate_parts(
    tensors: dict[str, torch.Tensor], parts_folders, dtype: torch.dtype, label: str, shapes_only: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """An SD 3.x / FLUX.1 checkpoint completed from the separate files ComfyUI and Forge keep:
    text encoders (models/text_encoder: clip_l, clip_g, t5xxl) and the VAE (models/VAE: ae),
    each found by its content. Files without the family's required encoders or VAE are refused
    naming what is missing and where to put it; SD3's optional T5 is taken when present.
    -> (the completed tensors, the file each added part came from)."""
    from core import flow_files

    family = detector_for({k: () for k in tensors})
    if family is None or family.flow is None:
        return tensors, {}
    present = {name for name in flow_files.ENCODER_PARTS if any(k.startswith(f"{FLOW_TEXT}{name}.") for k in tensors)}
    wanted = [name for name in (*family.flow.encoders, *family.flow.optional_encoders) if name not in present]
    if not any(k.startswith(VAE) for k in tensors):
        wanted.append("vae16")
    found = flow_files.find_parts(parts_folders, wanted) if wanted and parts_folders else {}
    tensors = dict(tensors)
    for path in found.values():
        tensors.update(flow_files.part_tensors(path, dtype=dtype, shapes_only=shapes_only)[1])
    missing = [name for name in wanted if name not in found and name not in family.flow.optional_encoders]
    if missing:
        raise EngineError(flow_files.missing_parts_message(family.label, missing), kind=NOT_FOUND, label=label)
    return tensors, found


def find_t5_tokenizer_for(path: Path, parts_folders) -> Path | None:
    """Where the T5 tokenizer of checkpoint ``path`` is: a diffusers folder's own (tokenizer_3
    for SD3, tokenizer_2 for FLUX), beside the file (or in a folder named like it), or in the
    separate text-encoder folders."""
    from core.text.t5_tokenizer import find_t5_tokenizer

    if path.is_dir():
        candidates = [path / "tokenizer_3", path / "tokenizer_2"]
    else:
        candidates = [path.parent / path.stem, path.parent]
    return find_t5_tokenizer([*candidates, *(parts_folders or ())])


def _prediction_name(value) -> str | None:
    value = str(value or "").strip().strip("'\"").lower()
    if value in ("eps", "epsilon", "noise"):
        return "eps"
    if value in ("v", "v_prediction", "v-prediction", "vprediction", "v_pred"):
        return "v"
    return None


def read_sidecar_yaml(path: Path) -> dict[str, str]:
    """``<checkpoint>.yaml`` beside a file, as A1111 uses it: only what the weights cannot tell
    is taken (the parameterization). ldm configs say ``parameterization: "v"`` (absent = eps);
    sgm configs name ``VScaling``/``EpsScaling`` in their denoiser config."""
    for suffix in (".yaml", ".yml"):
        sidecar = path.with_suffix(suffix)
        if sidecar.is_file():
            break
    else:
        return {}
    try:
        text = sidecar.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    found = None
    try:
        import yaml

        def walk(node):
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "parameterization":
                        return _prediction_name(value)
                    if (hit := walk(value)) is not None:
                        return hit
            elif isinstance(node, list):
                for value in node:
                    if (hit := walk(value)) is not None:
                        return hit
            return None

        found = walk(yaml.safe_load(text))
    except Exception:  # noqa: BLE001 - a broken yaml file: fall back to reading the one line
        match = re.search(r"^\s*parameterization\s*:\s*(\S+)", text, re.MULTILINE)
        found = _prediction_name(match.group(1)) if match else None
    if found is None:
        if "VScaling" in text:
            found = "v"
        elif "EpsScaling" in text or "model:" in text:
            found = "eps"  # an ldm/sgm config without a parameterization is epsilon
    return {"prediction": found, "prediction_source": "yaml"} if found else {}


@torch.no_grad()
def prediction_test_value(unet) -> float:
    """A1111's test forward pass (``is_using_v_parameterization_for_sd2``): a constant 0.5
    latent at timestep 999 with a constant 0.5 context. An epsilon model returns about its
    input there (at t=999 the input is almost all noise); a v model returns about minus the
    clean picture it guesses, far below the input. Returns mean(output - input)."""
    c = unet.config
    param = next(iter(unet.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.full((1, c.in_channels, 8, 8), 0.5, device=device, dtype=dtype)
    context = torch.full((1, 2, c.context_dim), 0.5, device=device, dtype=dtype)
    out = unet(x, torch.tensor([999.0], device=device), context)
    return float((out.float() - x.float()).mean())


def looks_like_v_prediction(unet) -> bool:
    """A1111's rule: v-prediction when mean(output - input) < -1 on the test input."""
    return prediction_test_value(unet) < -1


def container_class(spec: ModelSpec):
    """The module tree a spec is built as: LatentFlow for the transformer families (SD 3.x,
    FLUX.1), LatentDiffusion for the UNet ones."""
    if spec.transformer is not None:
        from core.models.flow_model import LatentFlow

        return LatentFlow
    return LatentDiffusion


def build_model(
    tensors: dict[str, torch.Tensor], spec: ModelSpec, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
    name: str = "checkpoint", progress: Callable[[float], None] | None = None,
) -> LatentDiffusion:
    """Build on the meta device, then take the file's tensors in place (converted one by one).

    ``progress(fraction)`` is called after each tensor with the share of the weights' bytes
    taken so far (this is where a memory-mapped file is read): rising, the last call 1.0."""
    with torch.device("meta"):
        model = container_class(spec)(spec)
    expected = model.state_dict()
    wanted = [(key, value) for key, value in model.internal_state(tensors).items() if key in expected]
    total = sum(value.numel() * value.element_size() for _, value in wanted) or 1
    done = 0
    state = {}
    keep_float32 = float32_parameter_names(model, dtype) if dtype in LOW_PRECISION else set()
    for key, value in wanted:
        if tuple(value.shape) != tuple(expected[key].shape):
            raise EngineError(f"{key} has shape {tuple(value.shape)}, expected {tuple(expected[key].shape)}", label=name)
        target = (torch.float32 if key in keep_float32 else dtype) if value.is_floating_point() else value.dtype
        state[key] = value.to(device=device, dtype=target)
        if progress is not None:
            done += value.numel() * value.element_size()
            progress(min(1.0, done / total))
    missing = [k for k in expected if k not in state and not k.endswith("position_ids")]
    if missing:
        raise EngineError(f"incomplete checkpoint, {len(missing)} weights missing (first: {missing[0]})", label=name)
    model.load_state_dict(state, strict=False, assign=True)
    # Buffers that are not in the file (position ids, schedule) are rebuilt on the target device.
    model.rebuild_buffers(device)
    still_meta = [n for n, b in model.named_buffers() if b.is_meta]
    if still_meta:
        raise RuntimeError(f"buffers left on the meta device: {still_meta}")
    return model.eval().requires_grad_(False)


def _read_with_spec(
    path: Path, prediction: str | None, zero_terminal_snr: bool | None, parts_folders=(), dtype: torch.dtype = torch.float32,
    shapes_only: bool = False,
) -> tuple[dict[str, torch.Tensor], ModelSpec]:
    """The file's tensors (``shapes_only``: meta tensors where the files' headers tell them) and
    the spec the notes above give, before any test forward pass."""
    tensors, metadata = read_checkpoint(path, dtype=dtype, shapes_only=shapes_only)
    tensors, parts = add_separate_parts(tensors, parts_folders, dtype, path.name, shapes_only)
    if path.is_file():
        metadata.update(read_sidecar_yaml(path))
    if prediction not in (None, "", "auto"):
        kind = _prediction_name(prediction)
        if kind is None:
            raise EngineError(f"must be auto, eps or v, got {prediction!r}", "prediction")
        metadata["prediction"], metadata["prediction_source"] = kind, "override"
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    try:
        spec = detect(shapes, metadata)
    except EngineError as e:
        raise EngineError(str(e), kind=e.kind, label=path.name) from None
    if zero_terminal_snr is None:
        zero_terminal_snr = metadata.get("zero_terminal_snr") == "1"
    if zero_terminal_snr:
        spec = dataclasses.replace(spec, zero_terminal_snr=True)
    if parts:
        spec = dataclasses.replace(spec, part_files=tuple(sorted((name, str(file)) for name, file in parts.items())))
    return tensors, spec


def read_spec(
    path: str | os.PathLike, *, prediction: str | None = None, zero_terminal_snr: bool | None = None, parts_folders=(),
) -> ModelSpec:
    """What ``load_model`` would build, without building it (the tensors are only mapped). An
    SD 2.x file with no hint keeps ``prediction_source == "default"``: only the test forward
    pass of a loaded model tells eps from v there."""
    return _read_with_spec(Path(path), prediction, zero_terminal_snr, parts_folders, shapes_only=True)[1]


def load_model(
    path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, *,
    prediction: str | None = None, zero_terminal_snr: bool | None = None,
    progress: Callable[[float], None] | None = None, parts_folders=(),
) -> LatentDiffusion:
    """``prediction``: None (or "auto") finds it out (see the module notes); "eps" or "v"
    overrides. ``zero_terminal_snr``: rescale the noise schedule (None = as the folder's
    scheduler config says, else off). ``progress(fraction)``: 0.0 first, then the share of
    the weights read (see build_model), ending at 1.0. ``parts_folders``: where SD 3.x /
    FLUX.1 files that come without text encoders or VAE find them (models/text_encoder,
    models/VAE), and their T5 tokenizer."""
    path = Path(path)
    if progress is not None:
        progress(0.0)
    tensors, spec = _read_with_spec(path, prediction, zero_terminal_snr, parts_folders, dtype)
    model = build_model(tensors, spec, device=device, dtype=dtype, name=path.name, progress=progress)
    if any(name == "t5xxl" for name, _ in spec.text_parts):
        from core.text.t5_tokenizer import T5Tokenizer

        found = find_t5_tokenizer_for(path, parts_folders)
        if found is None:
            raise EngineError("its T5 text encoder needs the T5 tokenizer, which no package here ships: put its "
                              "tokenizer.json (or spiece.model) beside the checkpoint or in models/text_encoder",
                              kind=NOT_FOUND, label=path.name)
        model.t5_tokenizer = T5Tokenizer(found)
    if spec.family_info.detects_prediction and spec.prediction_source == "default":
        detected = "v" if looks_like_v_prediction(model.unet) else "eps"
        model.spec = dataclasses.replace(spec, prediction=detected, prediction_source="detected")
    return model
