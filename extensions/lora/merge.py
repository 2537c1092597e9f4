"""Putting LoRAs into the loaded model and taking them out again, bit for bit.

Design: merge with backup. The new weight is ``W + sum_i m_i * delta_i``, computed in float32 and
written once. The original is kept: on the CPU the original tensor itself is set aside and the
layer gets a new tensor (no copy, and a memory-mapped checkpoint's pages stay shared with the
file); on an accelerator the weight is changed in place and a copy goes to CPU memory (VRAM use
does not grow). Taking LoRAs out puts the originals back (bit-identical to the checkpoint's),
and a new set of LoRAs or weights is always merged from the restored weights, so the order of
jobs never matters. When a job asks for exactly what is merged already, nothing is done.
(docs/EXTENSIONS.md says why this rather than peft adapters.)
"""
from __future__ import annotations

import dataclasses
import logging
import math
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.errors import EngineError

from .files import HashCache, find_lora, read_lora_file
from core.models.families import label as family_label

from .formats import Module, ShapeMismatch, guess_family, parse_state_dict
from .names import Target, build_table, canonical_name, has_two_text_encoders

log = logging.getLogger("extensions.lora")

TEXT_INTERNAL = "cond_stage_model.transformer."
TEXT_CHECKPOINT = "cond_stage_model.transformer.text_model."
LISTED = 40  # skipped module names written out per warning
# Largest |weight| of a <lora:...> tag. A1111 users go to about +-2 for styles and up to +-5..8
# with "slider" LoRAs; past 10 no LoRA makes a usable picture, and huge values overflow.
MAX_WEIGHT = 10.0


@dataclass(frozen=True)
class Request:
    """One ``<lora:...>`` tag: A1111's ``<lora:name:te:unet:dyn>`` with ``te=``/``unet=``/``dyn=``."""

    name: str
    te: float = 1.0
    unet: float = 1.0
    dyn: int | None = None


def parse_tag(tag) -> Request:
    """An ExtraNetworkTag -> Request, as A1111 reads it: the first number is the text-encoder
    weight, the second the UNet weight (defaults to the first), the third DyLoRA's rank.

    ValueError for what no LoRA can use: a weight that is not a number, not finite or beyond
    +-MAX_WEIGHT (1e308 overflows the merged weights into a black picture), a rank that is not
    a whole number >= 0."""
    args = [a for a in tag.args if len(a.split("=", 2)) != 2]  # A1111's positional items after the name
    named = tag.named
    te = _weight("te", named.get("te", args[0] if args else 1.0))
    unet = _weight("unet", named.get("unet", args[1] if len(args) > 1 else te))
    dyn_text = named.get("dyn", args[2] if len(args) > 2 else None)
    try:
        dyn = int(dyn_text) if dyn_text not in (None, "") else None
    except ValueError:
        raise ValueError(f"dyn must be a whole number, got {dyn_text!r}") from None
    if dyn is not None and dyn < 0:
        raise ValueError(f"dyn must be 0 or more, got {dyn}")
    return Request(tag.name.strip(), te, unet, dyn or None)


def _weight(name: str, value) -> float:
    try:
        weight = float(value)
    except ValueError:
        raise ValueError(f"{name} weight must be a number, got {value!r}") from None
    if not math.isfinite(weight) or abs(weight) > MAX_WEIGHT:
        raise ValueError(f"{name} weight must be between -{MAX_WEIGHT:g} and {MAX_WEIGHT:g}, got {value}")
    return weight


def check_tags(tags) -> None:
    """The extension's check before a job (core.extensions): every ``<lora:...>`` tag must
    parse; EngineError naming the tag otherwise."""
    for tag in tags:
        try:
            parse_tag(tag)
        except ValueError as e:
            raise EngineError(f"<lora:{':'.join(tag.items)}>: {e}", "prompt") from None


@dataclass
class LoadedLora:
    name: str  # as mentioned in the prompt
    path: Path
    stamp: tuple  # (path, size, mtime_ns): a changed file is read again
    modules: dict[str, Module]
    unknown_keys: list[str]
    family: str | None


@dataclass
class Activation:
    fields: dict = field(default_factory=dict)  # infotext fields
    warnings: list[str] = field(default_factory=list)


def model_family(model) -> str | None:
    """The family LoRAs for ``model`` are made for (its registry entry's ``lora_family``)."""
    spec = getattr(model, "spec", None)
    if spec is None or not getattr(spec, "family", None):
        return None
    return spec.family_info.lora_family or spec.family


def _text_slots(model) -> list[tuple[str, torch.nn.Module]]:
    """(checkpoint prefix, embedder) of each text encoder of a model container; [] otherwise."""
    spec, encoders = getattr(model, "spec", None), getattr(model, "encoder_modules", None)
    if spec is None or encoders is None:
        return []
    return list(zip(spec.text_prefixes, encoders))


def checkpoint_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Our parameters under the single-file checkpoint's names, with their shapes. Text encoders
    are converted back to the file's layout (``text_model.`` level; OpenCLIP towers of SD 2.x
    and SDXL with q/k/v fused into ``in_proj_weight``) on the meta device: nothing is copied."""
    slots = _text_slots(model)
    shapes: dict[str, tuple[int, ...]] = {}
    text: dict[str, dict[str, torch.Tensor]] = {prefix: {} for prefix, _ in slots}
    for name, param in model.named_parameters():
        prefix = next((p for p, _ in slots if name.startswith(p)), None)
        if prefix is not None:
            text[prefix][name[len(prefix):]] = torch.empty(param.shape, device="meta")
        elif not slots and name.startswith(TEXT_INTERNAL):  # a bare module tree: SD 1.x names
            shapes[TEXT_CHECKPOINT + name[len(TEXT_INTERNAL):]] = tuple(param.shape)
        else:
            shapes[name] = tuple(param.shape)
    for prefix, embedder in slots:
        for key, value in type(embedder).to_checkpoint(text[prefix]).items():
            shapes[prefix + key] = tuple(value.shape)
    return shapes


def internal_key(checkpoint_key: str) -> str:
    """SD 1.x text encoder names only; :func:`internal_name` knows every model."""
    if checkpoint_key.startswith(TEXT_CHECKPOINT):
        return TEXT_INTERNAL + checkpoint_key[len(TEXT_CHECKPOINT):]
    return checkpoint_key


def internal_name(model, checkpoint_key: str, rows: tuple[int, int] | None = None) -> str | None:
    """The parameter of ``model`` that holds a checkpoint key, or for a fused OpenCLIP
    in-projection the row block ``rows`` of it (q, k or v: each is its own Linear in our
    CLIPTextModel). None when the model has no such parameter."""
    finder = getattr(model, "internal_names", None)
    names = finder(checkpoint_key) if finder is not None else [(internal_key(checkpoint_key), None)]
    if rows is None:
        hits = [name for name, third in names if third is None]
    else:
        width = rows[1] - rows[0]
        hits = [name for name, third in names if third is not None and third * width == rows[0]]
    return hits[0] if len(hits) == 1 else None


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown + (f" ... and {len(names) - LISTED} more" if len(names) > LISTED else "")


class LoraManager:
    """The LoRA state of one engine: what is merged into which model, and the backups."""

    def __init__(self):
        self.hashes = HashCache()
        self.swap_devices = ("cpu",)  # where originals are set aside rather than copied
        self._model = None  # weakref to the model the backups belong to
        # internal parameter name -> ("swap", the original tensor) or ("copy", a CPU copy of it)
        self._backups: dict[str, tuple[str, torch.Tensor]] = {}
        self._applied: tuple = ()  # what is merged now: ((stamp, te, unet, dyn), ...)
        self._apply_warnings: list[str] = []
        self._apply_skipped: set[int] = set()  # positions of the LoRAs merged now that were skipped
        self._files: dict[tuple, LoadedLora] = {}
        self._table: tuple | None = None  # (weakref model, table, two text encoders)

    # --- the job hook -----------------------------------------------------------------

    def activate(self, model, folder: Path, tags) -> Activation:
        """Make ``model`` carry exactly the LoRAs of ``tags`` (none: restore it)."""
        out = Activation()
        wanted: list[tuple[LoadedLora, Request]] = []
        hashes = []
        for tag in tags:
            try:
                request = parse_tag(tag)
            except (ValueError, IndexError) as e:
                out.warnings.append(f"LoRA tag <lora:{':'.join(tag.items)}> ignored: {e}")
                continue
            path, note = find_lora(folder, request.name)
            if note:
                out.warnings.append(note)
            if path is None:
                out.warnings.append(f"LoRA not found: {request.name} (looked in {folder}); generating without it")
                continue
            try:
                lora = self._load(path, request.name)
                digest = self.hashes.short(path)
            except (EngineError, OSError, RuntimeError, ValueError) as e:
                out.warnings.append(f"LoRA {request.name}: cannot be used: {e}")
                continue
            wanted.append((lora, request))
            hashes.append(f"{request.name.replace(':', '').replace(',', '')}: {digest}")
        self._files = {lora.stamp: lora for lora, _ in wanted}  # keep only what this job uses
        try:
            warnings, skipped = self.apply(model, wanted)
            out.warnings.extend(warnings)
        except RuntimeError as e:  # out of memory, say: the model is restored, the job goes on
            out.warnings.append(f"LoRA: merging failed, generating without LoRAs: {e}")
            skipped = set(range(len(wanted)))
        # The infotext lists what shaped the picture: a LoRA skipped as a whole (another model
        # family, nothing in it fits this model) is named in the warnings instead.
        applied = [text for index, text in enumerate(hashes) if index not in skipped]
        if applied:
            out.fields["Lora hashes"] = ", ".join(applied)
        for warning in out.warnings:
            log.warning(warning)
        return out

    # --- merging ----------------------------------------------------------------------

    def apply(self, model, wanted: list[tuple[LoadedLora, Request]]) -> tuple[list[str], set[int]]:
        """Merge ``wanted``; returns the warnings and the positions in ``wanted`` of the LoRAs
        that were skipped as a whole."""
        if not wanted:
            self.restore()
            return [], set()
        key = tuple((lora.stamp, r.te, r.unet, r.dyn) for lora, r in wanted)
        if self._model is not None and self._model() is model and key == self._applied:
            return list(self._apply_warnings), set(self._apply_skipped)
        self.restore()
        self._model = weakref.ref(model)
        warnings, plan, skipped = self._plan(model, wanted)
        try:
            self._merge(model, plan)
        except BaseException:
            self.restore()
            raise
        self._applied = key
        self._apply_warnings = warnings
        self._apply_skipped = skipped
        return list(warnings), set(skipped)

    def restore(self) -> None:
        """Put every changed weight back exactly as it was."""
        model = self._model() if self._model is not None else None
        if model is not None and self._backups:
            with torch.no_grad():
                for name, (how, original) in self._backups.items():
                    param = model.get_parameter(name)
                    if how == "swap":
                        param.data = original
                    else:
                        param.copy_(original)
        self._backups.clear()
        self._applied = ()
        self._apply_warnings = []
        self._apply_skipped = set()
        self._model = None

    def forget_model(self) -> None:
        """The engine drops its model: restore it (if something still holds it) and let it go."""
        self.restore()
        self._table = None
        self._files.clear()

    @property
    def merged(self) -> tuple:
        return self._applied

    def _targets(self, model) -> tuple[dict[str, Target], bool]:
        if self._table is None or self._table[0]() is not model:
            shapes = checkpoint_shapes(model)
            self._table = (weakref.ref(model), build_table(shapes), has_two_text_encoders(shapes))
        return self._table[1], self._table[2]

    def _plan(self, model, wanted) -> tuple[list[str], dict[str, list], set[int]]:
        """Which parameter gets which deltas, and the positions in ``wanted`` of the LoRAs
        skipped as a whole; every shape checked (on the meta device) first."""
        table, two_te = self._targets(model)
        family = model_family(model)
        warnings: list[str] = []
        plan: dict[str, list] = {}
        skipped_loras: set[int] = set()
        for index, (lora, request) in enumerate(wanted):
            if request.te == 0 and request.unet == 0:
                continue
            if lora.family and family and lora.family != family:
                warnings.append(
                    f"LoRA {lora.name}: made for {family_label(lora.family)}, the loaded model is "
                    f"{family_label(family)}; skipped all {len(lora.modules)} modules")
                skipped_loras.add(index)
                continue
            skipped = [f"{k} (unknown key)" for k in lora.unknown_keys]
            used = 0
            for name, module in lora.modules.items():
                if not module.supported:
                    skipped.append(f"{name} ({module.kind})")
                    continue
                target = table.get(canonical_name(name, two_te))
                if target is None:
                    skipped.append(f"{name} (no such layer in this model)")
                    continue
                weight_key = internal_name(model, target.key, target.rows)
                if weight_key is None:
                    skipped.append(f"{name} (no such layer in this model)")
                    continue
                multiplier = request.unet if target.is_unet else request.te
                bias_key = bias = None
                if "diff_b" in module.tensors and target.key.endswith(".weight") and target.rows is None:
                    bias_key = internal_name(model, target.key[: -len("weight")] + "bias")
                    try:
                        bias = model.get_parameter(bias_key) if bias_key else None
                    except AttributeError:
                        bias = None
                    if bias is None:
                        skipped.append(f"{name}.diff_b (the layer has no bias)")
                try:
                    module.delta(target.shape, device="meta", dyn=request.dyn)
                    if bias is not None:
                        module.bias_delta(tuple(bias.shape), device="meta")
                except (ShapeMismatch, RuntimeError) as e:
                    skipped.append(f"{name} (shape: {e})".replace("\n", " "))
                    continue
                used += 1
                if multiplier == 0:
                    continue
                # A q/k/v block of a fused in-projection is a whole Linear of ours: no rows left.
                whole = dataclasses.replace(target, rows=None)
                plan.setdefault(weight_key, []).append(("weight", module, multiplier, whole, request.dyn))
                if bias is not None:
                    plan.setdefault(bias_key, []).append(("bias", module, multiplier, target, None))
            total = len(lora.modules) + len(lora.unknown_keys)
            if skipped and not used:
                warnings.append(f"LoRA {lora.name}: nothing in it matches the loaded model; skipped: {_listing(skipped)}")
                skipped_loras.add(index)
            elif skipped:
                warnings.append(f"LoRA {lora.name}: {len(skipped)} of {total} entries skipped: {_listing(skipped)}")
        return warnings, plan, skipped_loras

    def _merge(self, model, plan: dict[str, list]) -> None:
        with torch.no_grad():
            for name, entries in plan.items():
                param = model.get_parameter(name)
                merged = param.detach().to(torch.float32, copy=True)
                for what, module, multiplier, target, dyn in entries:
                    if what == "bias":
                        delta = module.bias_delta(tuple(param.shape), device=param.device)
                        merged += multiplier * delta
                        continue
                    delta = module.delta(target.shape, device=param.device, dyn=dyn)
                    if target.rows is not None:
                        merged[target.rows[0]:target.rows[1]] += multiplier * delta
                    else:
                        merged += multiplier * delta
                if param.device.type in self.swap_devices:
                    # Keep the original tensor itself (no copy: when it maps the checkpoint file its
                    # pages stay shared with the page cache) and give the layer a new one.
                    self._backups[name] = ("swap", param.data)
                    param.data = merged.to(param.dtype)
                else:
                    # On an accelerator change it in place and keep the copy in CPU memory.
                    self._backups[name] = ("copy", param.detach().to("cpu", copy=True))
                    param.copy_(merged.to(param.dtype))

    # --- files ------------------------------------------------------------------------

    def _load(self, path: Path, name: str) -> LoadedLora:
        stat = path.stat()
        stamp = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        cached = self._files.get(stamp)
        if cached is not None:
            cached.name = name
            return cached
        tensors, metadata, peft_config = read_lora_file(path)
        parsed = parse_state_dict(tensors, metadata, peft_config)
        if not parsed.modules:
            raise ValueError(f"no LoRA tensors in {path.name} ({len(tensors)} tensors of unknown kinds)")
        return LoadedLora(name=name, path=path, stamp=stamp, modules=parsed.modules, unknown_keys=parsed.unknown_keys,
                          family=guess_family(parsed.modules, metadata))
