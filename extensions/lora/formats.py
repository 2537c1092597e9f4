"""LoRA file contents -> per-module weight differences (delta W).

A file is a flat table of tensors. Each key is a module name plus a suffix that says what the
tensor is; :func:`parse_state_dict` groups the tensors by module and tells the kind:

==========  ===================================================  ==============================
kind        tensors (suffixes)                                   delta W (before the multiplier)
==========  ===================================================  ==============================
lora        ``lora_down``/``lora_up`` (kohya), ``lora_A``/        (alpha / r) * up @ down,
            ``lora_B`` (PEFT), ``lora.down``/``lora.up`` and     r = rows of down; a conv down
            ``lora_linear_layer.*`` (diffusers), optional        keeps the layer's kernel
            ``lora_mid`` (LoCon tucker), ``alpha``               (3x3 down, 1x1 up)
loha        ``hada_w1_a``, ``hada_w1_b``, ``hada_w2_a``,         (alpha / r) * (w1a @ w1b) *
            ``hada_w2_b``, optional ``hada_t1``/``hada_t2``      (w2a @ w2b), element-wise
lokr        ``lokr_w1`` or ``lokr_w1_a``/``_b``, ``lokr_w2`` or  (alpha / r) * kron(w1, w2),
            ``lokr_w2_a``/``_b``, optional ``lokr_t2``           r = rows of a ``_b`` factor
                                                                 (scale 1 when none is factored)
full        ``diff`` (and ``diff_b`` for the bias)               diff
==========  ===================================================  ==============================

No ``alpha`` means alpha = r (scale 1), as A1111 and diffusers read such files. Tucker cores
(``lora_mid``, ``hada_t1/t2``, ``lokr_t2``) rebuild the full kernel:
``W[o, i, k, l] = sum_ab t[a, b, k, l] * wa[a, o] * wb[b, i]`` (``lora_mid``: up[o, a], down[b, i]).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import torch

from core.models.families import FLUX_DEV, SD3, families

# Key suffix -> role, tried in order; group "m" is the module name, "r" the role.
_SUFFIXES = [
    # old diffusers attention processors: ...attn1.processor.to_q_lora.down.weight
    re.compile(r"^(?P<m>.+)\.processor\.(?P<p>to_q|to_k|to_v|to_out)_lora\.(?P<r>down|up)\.weight$"),
    re.compile(r"^(?P<m>.+)\.(?:lora_linear_layer|lora)\.(?P<r>down|up)\.weight$"),
    re.compile(r"^(?P<m>.+)\.lora_(?P<r>down|up|mid)\.weight$"),
    re.compile(r"^(?P<m>.+)\.lora_(?P<r>A|B)(?:\.[^.]+)?\.weight$"),  # PEFT, maybe with the adapter name
    re.compile(r"^(?P<m>.+)\.(?P<r>lora_[AB]\.bias|a1\.weight|b1\.weight)$"),
    re.compile(r"^(?P<m>.+)\.(?P<r>alpha|hada_w[12]_[ab]|hada_t[12]|lokr_w[12]|lokr_w[12]_[ab]|lokr_t2|diff|diff_b"
               r"|dora_scale|lora_magnitude_vector|w_norm|b_norm|on_input|oft_blocks|oft_diag)$"),
]
_ROLE_ALIASES = {"down": "lora_down", "up": "lora_up", "A": "lora_down", "B": "lora_up", "mid": "lora_mid",
                 "a1.weight": "glora", "b1.weight": "glora", "lora_A.bias": "lora_bias", "lora_B.bias": "lora_bias"}


class ShapeMismatch(ValueError):
    pass


@dataclass
class Module:
    """One patched layer's tensors from a LoRA file."""

    name: str  # as in the file (without the suffix)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    alpha: float | None = None

    @property
    def kind(self) -> str:
        t = self.tensors
        if "dora_scale" in t or "lora_magnitude_vector" in t:
            return "DoRA (not supported)"
        if "lora_bias" in t:
            return "LoRA with bias (not supported)"
        if "lora_down" in t and "lora_up" in t:
            return "lora"
        if all(k in t for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")):
            return "loha"
        has_1 = "lokr_w1" in t or ("lokr_w1_a" in t and "lokr_w1_b" in t)
        has_2 = "lokr_w2" in t or ("lokr_w2_a" in t and "lokr_w2_b" in t)
        if has_1 and has_2:
            return "lokr"
        if "diff" in t or "diff_b" in t:
            return "full"
        known = {"w_norm": "norm", "b_norm": "norm", "on_input": "IA3", "oft_blocks": "OFT", "oft_diag": "OFT",
                 "glora": "GLoRA"}
        for key, label in known.items():
            if key in t:
                return f"{label} (not supported)"
        return f"incomplete ({', '.join(sorted(t)) or 'alpha only'})"

    @property
    def supported(self) -> bool:
        return self.kind in ("lora", "loha", "lokr", "full")

    def delta(self, shape: tuple[int, ...], device=None, dyn: int | None = None) -> torch.Tensor:
        """delta W for a weight of ``shape`` (scaled by alpha/rank, not by the user's multiplier),
        in float32 on ``device``. Raises ShapeMismatch when it does not fit that weight.
        Call with ``device="meta"`` to check the shapes without computing anything."""
        t = {k: v.to(device=device, dtype=torch.float32) for k, v in self.tensors.items()}
        kind = self.kind
        if kind == "lora":
            w, rank = _lora(t, dyn)
        elif kind == "loha":
            w, rank = _loha(t)
        elif kind == "lokr":
            w, rank = _lokr(t)
        elif kind == "full":
            if "diff" not in t:
                return torch.zeros(shape, device=device)
            w, rank = t["diff"], None
        else:
            raise ShapeMismatch(kind)
        scale = self.alpha / rank if (self.alpha is not None and rank) else 1.0
        return fit(w, shape) * scale

    def bias_delta(self, shape, device=None) -> torch.Tensor | None:
        if "diff_b" not in self.tensors:
            return None
        return fit(self.tensors["diff_b"].to(device=device, dtype=torch.float32), shape)


def fit(w: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A rebuilt delta -> the weight's shape: same output rows, same number of inputs per row
    (a [out, in*k*k] matrix becomes an [out, in, k, k] kernel; a Linear LoRA fits a 1x1 conv)."""
    shape = tuple(shape)
    if tuple(w.shape) == shape:
        return w
    if w.ndim and w.shape[0] == shape[0] and w[0].numel() == math.prod(shape[1:]):
        return w.reshape(shape)
    raise ShapeMismatch(f"gives {tuple(w.shape)}, layer is {shape}")


def _mat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def tucker(core: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """core [a, b, *k], wa [a, out], wb [b, in] -> [out, in, *k]."""
    return torch.einsum("ab...,ao,bi->oi...", core, _mat(wa), _mat(wb))


def _lora(t, dyn):
    up, down = _mat(t["lora_up"]), t["lora_down"]
    rank = down.shape[0]  # DyLoRA's dyn keeps the first ranks but not the scale (as A1111)
    if dyn:
        up, down = up[:, :dyn], down[:dyn]
    if "lora_mid" in t:
        # LoCon with a tucker core: up [out, r] (1x1), mid [r, r, k, k], down [r, in] (1x1).
        w = torch.einsum("ab...,oa,bi->oi...", t["lora_mid"], up, _mat(down))
    else:
        w = up @ _mat(down)
    return w, rank


def _loha(t):
    rank = t["hada_w1_b"].shape[0]
    parts = []
    for i in ("1", "2"):
        a, b, core = t[f"hada_w{i}_a"], t[f"hada_w{i}_b"], t.get(f"hada_t{i}")
        parts.append(tucker(core, a, b) if core is not None else _mat(a) @ _mat(b))
    w1, w2 = parts
    if w1.shape != w2.shape:
        w2 = w2.reshape(w1.shape)
    return w1 * w2, rank


def _lokr(t):
    rank = None
    if "lokr_w1" in t:
        w1 = t["lokr_w1"]
    else:
        w1 = t["lokr_w1_a"] @ t["lokr_w1_b"]
        rank = t["lokr_w1_b"].shape[0]
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
    elif "lokr_t2" in t:
        w2 = tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
        rank = t["lokr_w2_b"].shape[0]
    else:
        w2b = t["lokr_w2_b"]
        w2 = (t["lokr_w2_a"] @ _mat(w2b)).reshape(-1, *w2b.shape[1:])  # a conv w2_b keeps its kernel dims
        rank = w2b.shape[0]
    w1 = w1.reshape(*w1.shape, *([1] * (w2.ndim - w1.ndim)))
    return torch.kron(w1, w2.contiguous()), rank


@dataclass
class ParsedLora:
    modules: dict[str, Module]
    unknown_keys: list[str]  # keys whose suffix names no known tensor


def parse_state_dict(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
                     peft_config: dict | None = None) -> ParsedLora:
    modules: dict[str, Module] = {}
    unknown = []
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            unknown.append(key)
            continue
        for pattern in _SUFFIXES:
            if m := pattern.match(key):
                break
        else:
            unknown.append(key)
            continue
        name, role = m["m"], m["r"]
        if "p" in pattern.groupindex:  # old diffusers attention processors: attn1.processor.to_q_lora
            name = f"{name}.{m['p']}" + (".0" if m["p"] == "to_out" else "")
        role = _ROLE_ALIASES.get(role, role)
        module = modules.setdefault(name, Module(name))
        if role == "alpha":
            module.alpha = float(value.float().item()) if value.numel() == 1 else None
        else:
            module.tensors[role] = value
    _apply_peft_alphas(modules, metadata or {}, peft_config)
    return ParsedLora(modules, unknown)


def _apply_peft_alphas(modules: dict[str, Module], metadata: dict[str, str], peft_config: dict | None) -> None:
    """diffusers writes each component's LoraConfig (``unet.lora_alpha``, ``unet.alpha_pattern``...)
    as JSON under ``lora_adapter_metadata``; a bare PEFT save keeps it in adapter_config.json."""
    configs: dict[str, dict] = {}
    raw = metadata.get("lora_adapter_metadata")
    if raw:
        try:
            packed = json.loads(raw)
        except ValueError:
            packed = {}
        for key, value in packed.items() if isinstance(packed, dict) else ():
            component, _, field_name = key.partition(".")
            configs.setdefault(component, {})[field_name] = value
    if peft_config:
        configs.setdefault("", {}).update(peft_config)
    if not configs:
        return
    for name, module in modules.items():
        if module.alpha is not None or "lora_down" not in module.tensors:
            continue
        component, _, path = name.partition(".")
        config = configs.get(component)
        if config is None:
            config, path = configs.get(""), name.removeprefix("base_model.model.")
        if not config:
            continue
        alpha = config.get("lora_alpha")
        for pattern, value in (config.get("alpha_pattern") or {}).items():
            if re.fullmatch(rf"(?:.*\.)?(?:{pattern})", path):
                alpha = value
                break
        if alpha is not None:
            module.alpha = float(alpha)


# Transformer layers only one family has, in any naming (kohya's "_" or a dotted path).
_FLOW_LAYERS = (
    (FLUX_DEV, re.compile(r"(?:^|[._])(?:double_blocks|single_blocks|single_transformer_blocks)[._]\d"
                          r"|(?:^|[._])(?:img_in|txt_in|guidance_in|guidance_embedder|x_embedder)$")),
    (SD3, re.compile(r"(?:^|[._])(?:joint_blocks[._]\d|context_block|x_block|pos_embed|t_embedder|y_embedder)")),
)
# diffusers' double-stream blocks are "transformer_blocks" in both families (a name at the top,
# never a UNet's, whose sit in attentions); only SD 3.5 medium's have a second attention. A LoRA
# on those alone tells by the attention's input width: FLUX.1 3072, SD 3 medium / 3.5 medium
# 1536, SD 3.5 large 2432.
_TOP_BLOCK = r"^(?:transformer\.|lora_transformer_|lora_unet_|diffusion_model\.)?transformer_blocks[._]\d+[._]"
_SD3_SECOND_ATTENTION = re.compile(_TOP_BLOCK + r"attn2[._]")
_TOP_TRANSFORMER_BLOCK = re.compile(_TOP_BLOCK + r"attn[._](?:to_[qkv]|add_[qkv]_proj)$")
_FLOW_WIDTHS = {3072: FLUX_DEV, 1536: SD3, 2432: SD3}


def _flow_family(modules: dict[str, Module]) -> str | None:
    """SD 3.x or FLUX.1 when the LoRA's transformer layer names (or widths) say so."""
    for family, pattern in _FLOW_LAYERS:
        if any(pattern.search(name) for name in modules):
            return family
    if any(_SD3_SECOND_ATTENTION.match(name) for name in modules):
        return SD3
    for name, module in modules.items():
        if _TOP_TRANSFORMER_BLOCK.match(name):
            down = module.tensors.get("lora_down")
            if down is not None and down.ndim == 2 and down.shape[1] in _FLOW_WIDTHS:
                return _FLOW_WIDTHS[down.shape[1]]
    return None


def guess_family(modules: dict[str, Module], metadata: dict[str, str]) -> str | None:
    """Which model family a LoRA was trained for, when the file says (None: cannot tell). The
    widths and metadata names are the families' (core/models/families.py)."""
    lora_families = [f for f in families() if f.lora_family == f.name]
    names = list(modules)
    flow = _flow_family(modules)
    if flow:
        return flow
    if any(n.startswith(("lora_te3_", "text_encoder_3.")) for n in names):
        return _from_metadata(lora_families, metadata)  # a T5 LoRA: SD 3.x or FLUX.1, not SDXL
    if any(n.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for n in names):
        two_encoders = [f.name for f in lora_families if f.text_in_conditioner]
        if two_encoders:
            return two_encoders[0]
    # The cross-attention key/value input width is the text encoder's: 768 SD 1.x, 1024 SD 2.x, 2048 SDXL.
    by_width = {f.lora_context_width: f.name for f in lora_families if f.lora_context_width}
    for name, module in modules.items():
        if re.search(r"attn2[._]to_[kv]$", name):
            down = module.tensors.get("lora_down", module.tensors.get("hada_w1_b"))
            if down is not None and down.ndim == 2:
                family = by_width.get(down.shape[1])
                if family:
                    return family
    if metadata.get("ss_v2") == "True":  # kohya's flag for SD 2.x LoRAs
        return next((f.name for f in lora_families if f.lora_context_width == 1024), None)
    return _from_metadata(lora_families, metadata)


def _from_metadata(lora_families, metadata: dict[str, str]) -> str | None:
    """kohya's ``ss_base_model_version`` ("sd_v1", "sdxl_base_v1-0", "flux1", "sd3") or the
    model spec's ``modelspec.architecture``."""
    said = (str(metadata.get("ss_base_model_version", "")), str(metadata.get("modelspec.architecture", "")))
    for family in lora_families:
        if any(value.startswith(family.lora_metadata_prefixes) for value in said if family.lora_metadata_prefixes):
            return family.name
    return None
