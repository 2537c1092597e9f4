"""Model families: one registry entry per family holds everything that differs between them.

A checkpoint's family (``ModelSpec.family``, a name) is found by ``core.models.detection``
from its keys and shapes; every other place that behaves differently per family reads the
entry (``family_of(name)``) instead of testing the name. Adding a family means adding its
entry here (with a detector) and its model files; nothing else tests family names.

What an entry holds:

* ``latent``: the latent space (channels, scaling factor and shift of the VAE's latents,
  the latent->RGB linear map of the live previews);
* ``default_size``: the picture size the family was trained at (``v_size`` for
  v-prediction models of a family whose 768-v models are bigger, SD 2.x);
* ``conditioner``: the prompt encoder it needs (core/conditioning.py's classes);
* ``align_your_steps``: the "Align Your Steps" sigma table its schedule uses;
* ``lora_family`` / ``lora_context_width`` / ``lora_metadata_prefixes``: how a LoRA made for
  it is recognised (extensions/lora);
* ``text_in_conditioner``: text encoders under ``conditioner.embedders.N.`` (sgm layout);
* ``refiner``, ``upscaler``, ``detects_prediction``: roles and what loading must find out;
* ``flow``: how the network is sampled: None for the UNet families (discrete 1000-step noise
  schedule, eps or v), else a ``FlowFacts`` (SD 3.x and FLUX.1: rectified flow, a transformer
  predicting the velocity; the sigma shift, the distilled guidance input, the text encoders
  the family needs and may do without).

Entries are looked up by name; ``register`` adds one (tests add a fake family this way).
Detection asks each registered detector, newest first, whether it claims a state dict.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Callable

from core.errors import EngineError
from core.sampling.schedules import AYS_SD1, AYS_SDXL


@dataclass(frozen=True)
class LatentFormat:
    """A VAE latent space. ``rgb_factors`` (one row per channel: R, G, B) and ``rgb_bias`` map a
    sampling-space latent (VAE latent * scaling factor) to RGB in [-1, 1] for live previews."""

    channels: int = 4
    scaling_factor: float = 0.18215
    shift: float = 0.0
    rgb_factors: tuple[tuple[float, float, float], ...] = ()
    rgb_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def with_preview(self, factors, bias=None) -> "LatentFormat":
        factors = tuple(tuple(float(v) for v in row) for row in factors)
        bias = tuple(float(v) for v in (bias if bias is not None else (0.0, 0.0, 0.0)))
        if len(factors) != self.channels or any(len(row) != 3 for row in factors) or len(bias) != 3:
            raise EngineError(f"latent preview factors: expected {self.channels} rows of R, G, B and a bias of 3")
        if not all(math.isfinite(v) for v in (*bias, *(v for row in factors for v in row))):
            raise EngineError("latent preview factors: not finite numbers")
        return replace(self, rgb_factors=factors, rgb_bias=bias)


# SD 1.x (and 2.x, same VAE): the widely used "approximate cheap" factors of A1111, fitted by
# regressing decoded pixels on latents.
SD1_LATENT = LatentFormat(4, 0.18215, 0.0, (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
))
# SDXL's VAE was retrained: its latents mean other colours. Factors and bias as ComfyUI's SDXL
# latent format publishes them (a least-squares fit on SDXL VAE decodes).
SDXL_LATENT = LatentFormat(4, 0.13025, 0.0, (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
), (0.1084, -0.0175, -0.0011))
# The x4 upscaler's small VAE (scale 0.08333) works on the picture's own colours per channel.
X4_LATENT = replace(SD1_LATENT, scaling_factor=0.08333)

# Metadata keys a checkpoint may carry its own preview map under (JSON lists), as the demo does.
PREVIEW_FACTORS_KEY = "latent_rgb_factors"
PREVIEW_BIAS_KEY = "latent_rgb_bias"


def _text_conditioner(model, tokenizer, embeddings, clip_skip, emphasis, check_stop):
    from core.conditioning import TextConditioner

    return TextConditioner(model.text_encoder, tokenizer, embeddings, clip_skip, emphasis, check_stop)


def _sdxl_conditioner(model, tokenizer, embeddings, clip_skip, emphasis, check_stop):
    from core.conditioning import SDXLConditioner

    return SDXLConditioner(model, tokenizer, embeddings, emphasis, check_stop=check_stop)


def _flow_conditioner(model, tokenizer, embeddings, clip_skip, emphasis, check_stop):
    from core.flow_conditioning import FlowConditioner

    return FlowConditioner(model, tokenizer, emphasis, check_stop)


@dataclass(frozen=True)
class FlowFacts:
    """What a rectified-flow family needs beyond its latent format.

    ``shift``: the sigma shift of its schedule (SD3: 3.0); None: resolution dependent (FLUX dev,
    as diffusers' FluxPipeline computes it from the picture's token count).
    ``distilled_guidance``: the network takes the guidance value as an input (FLUX dev's
    "Distilled CFG Scale"); real CFG is then optional (cfg_scale 1 = off, as Forge).
    ``encoders``: the text encoders it needs; ``optional_encoders``: those it can do without
    (SD3's T5: zeros in its place, as diffusers and ComfyUI do).
    ``t5_tokens``: how many T5 tokens a prompt is padded/truncated to (diffusers' defaults)."""

    shift: float | None = 3.0
    distilled_guidance: bool = False
    encoders: tuple[str, ...] = ()
    optional_encoders: tuple[str, ...] = ()
    t5_tokens: int = 256
    default_steps: int = 28
    default_cfg: float = 5.0


def _detector(name: str) -> Callable:
    """A detector of core/models/detection.py, imported when called (detection imports us)."""

    def detect(shapes, metadata):
        from core.models import detection

        return getattr(detection, name)(shapes, metadata)

    return detect


def _has_prefix(prefix: str) -> Callable[[dict], bool]:
    return lambda shapes: any(k.startswith(prefix) for k in shapes)


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    latent: LatentFormat = SD1_LATENT
    default_size: int = 512
    v_size: int | None = None  # default size of its v-prediction models, when they differ
    conditioner: Callable = _text_conditioner
    align_your_steps: tuple[float, ...] = AYS_SD1
    text_in_conditioner: bool = False
    refiner: bool = False
    upscaler: bool = False
    detects_prediction: bool = False  # epsilon or v is found by a test forward pass when unsaid
    lora_family: str | None = None  # the family name LoRAs for this one are made for
    lora_context_width: int | None = None  # cross-attention input width of those LoRAs
    lora_metadata_prefixes: tuple[str, ...] = ()  # ss_base_model_version / modelspec.architecture
    # ``claims(shapes)``: the state dict is of this detector's kind; ``detect(shapes, metadata)``
    # then returns its ModelSpec (of this family or a sibling). Siblings leave both None.
    claims: Callable[[dict], bool] | None = field(default=None, compare=False)
    detect: Callable[[dict, dict], object] | None = field(default=None, compare=False)
    flow: FlowFacts | None = None  # None: a UNet family on the discrete schedule

    def size_for(self, prediction: str) -> int:
        return self.v_size if self.v_size and prediction == "v" else self.default_size


_REGISTRY: dict[str, Family] = {}
_DETECTORS: list[Family] = []  # asked newest first


def register(family: Family) -> Family:
    """Add (or replace) a family; one with a detector is asked before those registered earlier."""
    if family.name in _REGISTRY:
        unregister(family.name)
    _REGISTRY[family.name] = family
    if family.detect is not None:
        _DETECTORS.insert(0, family)
    return family


def unregister(name: str) -> None:
    family = _REGISTRY.pop(name, None)
    if family is not None and family in _DETECTORS:
        _DETECTORS.remove(family)


def family_of(name: str) -> Family:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EngineError(f"unknown model family {name!r} (known: {', '.join(_REGISTRY)})") from None


def families() -> list[Family]:
    return list(_REGISTRY.values())


def detector_for(shapes: dict) -> Family | None:
    """The newest registered family whose detector claims these checkpoint keys."""
    return next((f for f in _DETECTORS if f.claims is None or f.claims(shapes)), None)


def label(name: str) -> str:
    family = _REGISTRY.get(name)
    return family.label if family else name


def preview_from_metadata(latent: LatentFormat, metadata: dict) -> LatentFormat:
    """The family's latent format, with the checkpoint's own preview map when its metadata has one."""
    if PREVIEW_FACTORS_KEY not in metadata:
        return latent
    try:
        factors = json.loads(metadata[PREVIEW_FACTORS_KEY])
        bias = json.loads(metadata[PREVIEW_BIAS_KEY]) if PREVIEW_BIAS_KEY in metadata else None
    except (TypeError, ValueError):
        raise EngineError(f"metadata {PREVIEW_FACTORS_KEY}/{PREVIEW_BIAS_KEY}: not JSON lists") from None
    return latent.with_preview(factors, bias)


SD1, SD1_INPAINT = "sd1", "sd1-inpaint"
SD2, SD2_INPAINT = "sd2", "sd2-inpaint"
SDXL, SDXL_INPAINT, SDXL_REFINER = "sdxl", "sdxl-inpaint", "sdxl-refiner"
X4_UPSCALER = "x4-upscaler"
SD3 = "sd3"
FLUX_DEV, FLUX_SCHNELL = "flux-dev", "flux-schnell"

# SD 3.x and FLUX.1 share the 16-channel autoencoder design; their scale and shift differ (the
# released VAEs' configs: SD3 1.5305 / 0.0609, FLUX 0.3611 / 0.1159). No published preview map
# is used: the live preview of these families is off until one is fitted.
SD3_LATENT = LatentFormat(16, 1.5305, 0.0609)
FLUX_LATENT = LatentFormat(16, 0.3611, 0.1159)

_SD1_LORA = dict(lora_family=SD1, lora_context_width=768, lora_metadata_prefixes=("sd_v1", "stable-diffusion-v1"))
_SD2_LORA = dict(lora_family=SD2, lora_context_width=1024, lora_metadata_prefixes=("sd_v2", "stable-diffusion-v2"))
_SDXL_LORA = dict(lora_family=SDXL, lora_context_width=2048, lora_metadata_prefixes=("sdxl", "stable-diffusion-xl"))
_SDXL = dict(latent=SDXL_LATENT, default_size=1024, conditioner=_sdxl_conditioner, align_your_steps=AYS_SDXL,
             text_in_conditioner=True)

# Registered in this order so that detection asks SDXL (conditioner.embedders), then the
# OpenCLIP families (SD 2.x, x4), then SD 1.x, which takes whatever is left.
register(Family(SD1, "SD 1.x", claims=None, detect=_detector("detect_sd1"), **_SD1_LORA))
register(Family(SD1_INPAINT, "SD 1.x inpainting", **_SD1_LORA))
register(Family(SD2, "SD 2.x", v_size=768, detects_prediction=True, claims=_has_prefix("cond_stage_model.model."),
                detect=_detector("detect_openclip_family"), **_SD2_LORA))
register(Family(SD2_INPAINT, "SD 2.x inpainting", **_SD2_LORA))
register(Family(X4_UPSCALER, "SD x4 upscaler", latent=X4_LATENT, upscaler=True))
register(Family(SDXL, "SDXL", claims=_has_prefix("conditioner.embedders."), detect=_detector("detect_sdxl"),
                **_SDXL, **_SDXL_LORA))
register(Family(SDXL_INPAINT, "SDXL inpainting", **_SDXL, **_SDXL_LORA))
register(Family(SDXL_REFINER, "SDXL refiner", refiner=True, **_SDXL, **_SDXL_LORA))

# The transformer families, asked before the UNet ones (registered last): their keys never
# overlap (joint_blocks / double_blocks under model.diffusion_model.).
register(Family(
    SD3, "SD 3.x", latent=SD3_LATENT, default_size=1024, conditioner=_flow_conditioner,
    claims=_has_prefix("model.diffusion_model.joint_blocks."), detect=_detector("detect_sd3"),
    lora_family=SD3, lora_metadata_prefixes=("sd3", "stable-diffusion-v3"),
    flow=FlowFacts(shift=3.0, encoders=("clip_l", "clip_g"), optional_encoders=("t5xxl",), t5_tokens=256,
                   default_steps=28, default_cfg=5.0),
))
_FLUX = dict(latent=FLUX_LATENT, default_size=1024, conditioner=_flow_conditioner, lora_family=FLUX_DEV,
             lora_metadata_prefixes=("flux",))
register(Family(
    FLUX_DEV, "FLUX.1 dev", claims=_has_prefix("model.diffusion_model.double_blocks."), detect=_detector("detect_flux_family"),
    flow=FlowFacts(shift=None, distilled_guidance=True, encoders=("clip_l", "t5xxl"), t5_tokens=512,
                   default_steps=20, default_cfg=1.0),
    **_FLUX,
))
register(Family(
    FLUX_SCHNELL, "FLUX.1 schnell",
    flow=FlowFacts(shift=1.0, encoders=("clip_l", "t5xxl"), t5_tokens=256, default_steps=4, default_cfg=1.0),
    **_FLUX,
))
