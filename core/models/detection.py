"""Read a checkpoint's architecture from its keys and tensor shapes: no config file needed.

Families are told apart by where their text encoder lives and what the UNet takes in:

| family | text encoder(s) | UNet |
| --- | --- | --- |
| SD 1.x (+ inpainting) | ``cond_stage_model.transformer`` (CLIP-L) | 4 (9) input channels, 8 heads |
| SD 2.x (+ inpainting) | ``cond_stage_model.model`` (OpenCLIP ViT-H) | 4 (9) input channels, heads of 64 |
| x4 upscaler | ``cond_stage_model.model`` (OpenCLIP ViT-H) | 7 input channels, noise-level embedding table |
| SDXL base (+ inpainting) | ``conditioner.embedders.0.transformer`` (CLIP-L) + ``.1.model`` (OpenCLIP bigG) | adm vector = pooled + 6 size numbers |
| SDXL refiner | ``conditioner.embedders.0.model`` (OpenCLIP bigG only) | adm vector = pooled + 5 numbers (sizes, aesthetic score) |

Each family's detector is asked through the registry (core/models/families.py: the newest
registered detector that claims the keys); everything that differs per family afterwards is
read from the family's entry (``ModelSpec.family_info``), never by testing its name.

Widths, depths and channel counts are read off the shapes. What shapes cannot tell (SD 2.x
epsilon or v-prediction, the latent scale) comes from the family, the file's metadata, a
sidecar .yaml or the user (core/loading.py), or a test forward pass for SD 2.x.
"""
from __future__ import annotations

import dataclasses

import re
from dataclasses import dataclass, field

from core.errors import UNAVAILABLE, EngineError
from core.models.clip import CLIP, OPENCLIP, TextEncoderConfig
from core.models.unet import UNetConfig
from core.models.vae import VAEConfig

UNET = "model.diffusion_model."
VAE = "first_stage_model."
TEXT = "cond_stage_model.transformer.text_model."  # SD 1.x CLIP-L
OPENCLIP_TEXT = "cond_stage_model.model."  # SD 2.x / x4 OpenCLIP ViT-H
SDXL_EMBEDDER = "conditioner.embedders."
FLOW_TEXT = "text_encoders."  # SD 3.x / FLUX.1: text_encoders.{clip_l,clip_g,t5xxl}. (ComfyUI's layout)

from core.models.families import (  # noqa: F401 (the family names, re-exported)
    FLUX_DEV, FLUX_SCHNELL, SD1, SD1_INPAINT, SD2, SD2_INPAINT, SD3, SDXL, SDXL_INPAINT, SDXL_REFINER, X4_UPSCALER, Family,
    LatentFormat, detector_for, family_of, preview_from_metadata,
)
# ldm's LatentUpscaleDiffusion: the low-resolution picture is noised with its own "linear"
# schedule (betas = linspace(sqrt(1e-4), sqrt(0.02), 1000) ** 2) up to this level.
X4_LOW_SCALE = (0.0001, 0.02, 350)


@dataclass(frozen=True)
class ModelSpec:
    family: str
    unet: UNetConfig
    vae: VAEConfig
    text: TextEncoderConfig  # the first (SD 1.x/2.x, x4: the only; refiner: bigG) text encoder
    prediction: str = "eps"  # what the UNet predicts: "eps" (noise) or "v"
    linear_start: float = 0.00085
    linear_end: float = 0.012
    num_timesteps: int = 1000
    notes: tuple[str, ...] = field(default=())
    text2: TextEncoderConfig | None = None  # SDXL base: the OpenCLIP bigG encoder
    # Where ``prediction`` came from: default (the family's), metadata (file or diffusers
    # scheduler), yaml (sidecar file), override (the caller), detected (test forward pass).
    prediction_source: str = "default"
    zero_terminal_snr: bool = False  # alphas_cumprod rescaled (Lin et al. 2023)
    size_embed_dim: int = 256  # SDXL: Fourier features per size/crop/aesthetic number
    low_scale: tuple[float, float, int] | None = None  # x4: (linear_start, linear_end, max noise level)
    native_size: int | None = None  # from the file's ``modelspec.resolution`` metadata, when it says
    # the checkpoint's own latent format (its metadata's preview map); None: the family's
    latent_format_override: LatentFormat | None = None
    # The transformer families (SD 3.x, FLUX.1; ``unet`` is None there): the network's config
    # (MMDiTConfig / FluxConfig) and each text encoder present, by its slot name ("clip_l",
    # "clip_g", "t5xxl") with its config, in the family's order.
    transformer: object | None = None
    text_parts: tuple[tuple[str, object], ...] = ()
    # The separate files a checkpoint was completed from (part name, path): SD3/FLUX encoders
    # and VAE from models/text_encoder and models/VAE (Forge's "Module N" infotext fields).
    part_files: tuple[tuple[str, str], ...] = ()

    @property
    def family_info(self) -> Family:
        """This family's registry entry (core/models/families.py)."""
        return family_of(self.family)

    @property
    def latent_format(self) -> LatentFormat:
        """The latent space: the family's, with this VAE's scaling factor and the file's own
        preview map when it has one."""
        latent = self.latent_format_override or self.family_info.latent
        return dataclasses.replace(latent, scaling_factor=self.vae.scaling_factor, shift=self.vae.shift_factor)

    @property
    def label(self) -> str:
        return self.family_info.label

    @property
    def is_upscaler(self) -> bool:
        return self.family_info.upscaler

    @property
    def default_size(self) -> int:
        """The size the model was trained at: its family's (1024 for SDXL, 768 for SD 2.x
        v-prediction (the 768-v models), else 512), unless the file's metadata says otherwise
        (the 64x64 demo model). The x4 upscaler works on any input size."""
        return self.native_size or self.family_info.size_for(self.prediction)

    @property
    def text_encoders(self) -> tuple[TextEncoderConfig, ...]:
        if self.text_parts:
            return tuple(config for _, config in self.text_parts)
        return (self.text,) if self.text2 is None else (self.text, self.text2)

    @property
    def text_prefixes(self) -> tuple[str, ...]:
        """Each text encoder's prefix in the checkpoint (and in our module tree)."""
        if self.text_parts:
            return tuple(f"{FLOW_TEXT}{name}." for name, _ in self.text_parts)
        if self.family_info.text_in_conditioner:
            return tuple(f"{SDXL_EMBEDDER}{i}." for i in range(len(self.text_encoders)))
        return ("cond_stage_model.",)

    @property
    def embedding_key(self) -> str:
        """Which vectors of an SDXL textual-inversion file fit ``text``."""
        return "clip_g" if self.text.layout == OPENCLIP else "clip_l"


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
    channel_mult, depth, no_self = [], [], []
    context_dim, use_linear = None, False

    def cross_only(block: str) -> bool:
        q, k = shapes.get(prefix + block + ".attn1.to_q.weight"), shapes.get(prefix + block + ".attn1.to_k.weight")
        return q is not None and k is not None and k[1] != q[1]

    for level in levels:
        if len(level) != num_res_blocks:
            raise EngineError(f"UNet levels have different numbers of blocks ({[len(lv) for lv in levels]})")
        first = level[0]
        channel_mult.append(shape(f"input_blocks.{first}.0.out_layers.3.weight")[0] // model_channels)
        tb = _indices(shapes, prefix, rf"input_blocks\.{first}\.1\.transformer_blocks\.(\d+)\.")
        depth.append(len(tb))
        no_self.append(bool(tb) and cross_only(f"input_blocks.{first}.1.transformer_blocks.0"))
        if tb:
            context_dim = shape(f"input_blocks.{first}.1.transformer_blocks.0.attn2.to_k.weight")[1]
            use_linear = len(shape(f"input_blocks.{first}.1.proj_in.weight")) == 2
    middle_depth = len(_indices(shapes, prefix, r"middle_block\.1\.transformer_blocks\.(\d+)\."))
    if context_dim is None and middle_depth:
        context_dim = shape("middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
        use_linear = len(shape("middle_block.1.proj_in.weight")) == 2
    label = shapes.get(prefix + "label_emb.0.0.weight")
    table = shapes.get(prefix + "label_emb.weight")
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
        adm_in_channels=label[1] if label is not None else None,
        num_classes=table[0] if table is not None else None,
        disable_self_attn=tuple(no_self) if any(no_self) else (),
        disable_middle_self_attn=bool(middle_depth) and cross_only("middle_block.1.transformer_blocks.0"),
    )


def detect_vae(shapes: dict, prefix: str = VAE, scaling_factor: float = 0.18215) -> VAEConfig:
    ch = shapes[prefix + "encoder.conv_in.weight"][0]
    levels = _indices(shapes, prefix, r"encoder\.down\.(\d+)\.")
    ch_mult = tuple(shapes[prefix + f"encoder.down.{i}.block.0.conv2.weight"][0] // ch for i in levels)
    num_res_blocks = len(_indices(shapes, prefix, r"encoder\.down\.0\.block\.(\d+)\."))
    z_channels = shapes[prefix + "decoder.conv_in.weight"][1]
    # SD3 and FLUX.1 VAEs have no quant convs: the latent is the decoder's input as it is. A file
    # with only one of the two is incomplete (the KeyError below), not a VAE without them.
    quant_convs = any(prefix + f"{name}.weight" in shapes for name in ("quant_conv", "post_quant_conv"))
    return VAEConfig(
        in_channels=shapes[prefix + "encoder.conv_in.weight"][1],
        out_channels=shapes[prefix + "decoder.conv_out.weight"][0],
        ch=ch,
        ch_mult=ch_mult,
        num_res_blocks=num_res_blocks,
        z_channels=z_channels,
        embed_dim=shapes[prefix + "post_quant_conv.weight"][1] if quant_convs else z_channels,
        scaling_factor=scaling_factor,
        use_quant_conv=quant_convs,
    )


# Per text-encoder layout, the keys its sizes are read from: the token embedding [vocab, hidden],
# the first MLP layer [intermediate, hidden], the position embedding [positions, hidden], and
# the pattern that numbers the layers.
_TEXT_SIZE_KEYS = {
    CLIP: ("embeddings.token_embedding.weight", "encoder.layers.0.mlp.fc1.weight",
           "embeddings.position_embedding.weight", r"encoder\.layers\.(\d+)\."),
    OPENCLIP: ("token_embedding.weight", "transformer.resblocks.0.mlp.c_fc.weight",
               "positional_embedding", r"transformer\.resblocks\.(\d+)\."),
}


def _text_sizes(shapes: dict, prefix: str, layout: str) -> dict:
    """The TextEncoderConfig fields every layout reads from its shapes the same way."""
    tokens, mlp, positions, layer = _TEXT_SIZE_KEYS[layout]
    vocab, hidden = shapes[prefix + tokens]
    return dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=shapes[prefix + mlp][0],
                num_layers=len(_indices(shapes, prefix, layer)), max_positions=shapes[prefix + positions][0],
                layout=layout)


def detect_clip_text(shapes: dict, prefix: str = TEXT, **usage) -> TextEncoderConfig:
    """An OpenAI-layout CLIP text encoder (``...text_model.`` prefix)."""
    return TextEncoderConfig(**_text_sizes(shapes, prefix, CLIP), **usage)


def detect_openclip_text(shapes: dict, prefix: str, **usage) -> TextEncoderConfig:
    """An open_clip text tower (``...model.`` prefix): GELU, fused in-projections."""
    projection = shapes.get(prefix + "text_projection")
    return TextEncoderConfig(
        **_text_sizes(shapes, prefix, OPENCLIP),
        hidden_act="gelu",
        projection_dim=projection[1] if projection is not None else None,
        has_logit_scale=prefix + "logit_scale" in shapes,
        honour_clip_skip=False,
        pad_with_eos=False,
        **usage,
    )


def describe(shapes: dict) -> str:
    """A short account of what a state dict holds, for error messages."""
    tops = sorted({k.split(".")[0] for k in shapes})
    return f"{len(shapes)} tensors; top-level names: {', '.join(tops[:8])}{' ...' if len(tops) > 8 else ''}"


def _prediction(metadata: dict, default: str) -> tuple[str, str]:
    value = metadata.get("prediction")
    if value in ("eps", "v"):
        return value, metadata.get("prediction_source", "metadata")
    return default, "default"


def _require(shapes: dict, keys: list[str], what: str) -> None:
    missing = [k for k in keys if k not in shapes]
    if missing:
        raise EngineError(f"incomplete {what} checkpoint: no {missing[0]} ({describe(shapes)})")


def detect(shapes: dict, metadata: dict | None = None) -> ModelSpec:
    """shapes: checkpoint key -> shape (tuple), keys already normalised by the loader.

    metadata (all optional, strings): ``prediction`` ("eps"/"v") and ``prediction_source``,
    ``latent_scale_factor``, ``unet_num_heads``, ``unet_norm_groups``, ``vae_norm_groups``, ``text_layer`` ("last" for diffusers SD 2.x
    text encoders, which were saved without their unused last layer)."""
    metadata = metadata or {}
    detector = detector_for(shapes)
    if detector is None:
        raise EngineError(f"unknown model layout ({describe(shapes)})")
    spec = _with_norm_groups(detector.detect(shapes, metadata), metadata)
    changes = {}
    native = _square_resolution(metadata.get("modelspec.resolution"))
    if native:
        changes["native_size"] = native
    if spec.family_info.latent.shift != spec.vae.shift_factor:
        changes["vae"] = dataclasses.replace(spec.vae, shift_factor=spec.family_info.latent.shift)
    latent = preview_from_metadata(spec.family_info.latent, metadata)
    if latent is not spec.family_info.latent:
        changes["latent_format_override"] = latent
    return dataclasses.replace(spec, **changes) if changes else spec


def _square_resolution(value) -> int | None:
    """``modelspec.resolution`` ("64x64", the Stability model-spec field) -> 64, when square and sane."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", str(value or ""))
    if not match or match.group(1) != match.group(2):
        return None
    size = int(match.group(1))
    return size if 8 <= size <= 8192 and size % 8 == 0 else None


def _with_norm_groups(spec: ModelSpec, metadata: dict) -> ModelSpec:
    """GroupNorm group counts are invisible in the shapes; released models all use 32, and a
    narrow model (the demo) says otherwise in ``unet_norm_groups`` / ``vae_norm_groups``."""
    changes = {}
    for part, key in (("unet", "unet_norm_groups"), ("vae", "vae_norm_groups")):
        if key in metadata:
            groups = int(metadata[key])
            config = getattr(spec, part)
            widths = _norm_widths(config)
            if groups < 1 or any(w % groups for w in widths):
                raise EngineError(f"{key}={groups} does not divide the model's channel widths {sorted(widths)}")
            changes[part] = dataclasses.replace(config, norm_groups=groups)
    return dataclasses.replace(spec, **changes) if changes else spec


def _norm_widths(config) -> set[int]:
    if hasattr(config, "model_channels"):
        return {config.model_channels * m for m in config.channel_mult}
    return {config.ch * m for m in config.ch_mult}


def _scale(metadata: dict, family: str) -> float:
    return float(metadata.get("latent_scale_factor", family_of(family).latent.scaling_factor))


def detect_sd1(shapes: dict, metadata: dict) -> ModelSpec:
    required = [UNET + "input_blocks.0.0.weight", VAE + "encoder.conv_in.weight", TEXT + "embeddings.token_embedding.weight"]
    missing = [k for k in required if k not in shapes]
    if missing:
        raise EngineError(f"unknown model layout: no {missing[0]} ({describe(shapes)})")
    try:
        unet = detect_unet(shapes, num_heads=int(metadata.get("unet_num_heads", 8)))
        vae = detect_vae(shapes, scaling_factor=_scale(metadata, SD1))
        text = detect_clip_text(shapes)
    except KeyError as e:
        raise EngineError(f"incomplete SD 1.x checkpoint: missing {e.args[0]}") from None
    if unet.in_channels == 9:
        family = SD1_INPAINT
    elif unet.in_channels == vae.embed_dim:
        family = SD1
    else:
        raise EngineError(f"unknown SD 1.x variant: UNet takes {unet.in_channels} input channels")
    prediction, source = _prediction(metadata, "eps")
    return ModelSpec(family=family, unet=unet, vae=vae, text=text, prediction=prediction, prediction_source=source)


def detect_openclip_family(shapes: dict, metadata: dict) -> ModelSpec:
    """SD 2.x (epsilon or v, inpainting) and the x4 upscaler: OpenCLIP ViT-H text tower."""
    if any(k.startswith("depth_model.") for k in shapes):
        raise EngineError("SD 2.x depth-to-image checkpoints are recognised but not supported", kind=UNAVAILABLE)
    if any(k.startswith(("embedder.", "noise_augmentor.")) for k in shapes):
        raise EngineError("SD 2.x unCLIP checkpoints are recognised but not supported", kind=UNAVAILABLE)
    _require(shapes, [UNET + "input_blocks.0.0.weight", VAE + "encoder.conv_in.weight", OPENCLIP_TEXT + "token_embedding.weight"], "SD 2.x")
    # SD 2.x reads the penultimate layer through ln_final; diffusers' SD 2.x text encoders were
    # saved without that unused last layer, so their last layer is the one to read.
    skip_last = 0 if metadata.get("text_layer") == "last" else 1
    try:
        table = shapes.get(UNET + "label_emb.weight")
        upscaler = table is not None and shapes[UNET + "input_blocks.0.0.weight"][1] == 7
        family = X4_UPSCALER if upscaler else SD2
        unet = detect_unet(
            shapes, num_heads=int(metadata.get("unet_num_heads", 8)) if upscaler else None, head_dim=None if upscaler else 64
        )
        vae = detect_vae(shapes, scaling_factor=_scale(metadata, family))
        text = detect_openclip_text(shapes, OPENCLIP_TEXT, skip_last=skip_last, final_norm=True)
    except KeyError as e:
        raise EngineError(f"incomplete SD 2.x checkpoint: missing {e.args[0]}") from None
    if upscaler:
        prediction, source = _prediction(metadata, "v")
        return ModelSpec(
            family=X4_UPSCALER, unet=unet, vae=vae, text=text, prediction=prediction, prediction_source=source,
            linear_start=0.0001, linear_end=0.02, low_scale=X4_LOW_SCALE,
        )
    if unet.in_channels == 9:
        family = SD2_INPAINT
    elif unet.in_channels == 5:
        raise EngineError("SD 2.x depth-to-image checkpoints (5 input channels) are recognised but not supported", kind=UNAVAILABLE)
    elif unet.in_channels != vae.embed_dim:
        raise EngineError(f"unknown SD 2.x variant: UNet takes {unet.in_channels} input channels")
    prediction, source = _prediction(metadata, "eps")
    return ModelSpec(family=family, unet=unet, vae=vae, text=text, prediction=prediction, prediction_source=source)


def detect_sdxl(shapes: dict, metadata: dict) -> ModelSpec:
    clip_l = SDXL_EMBEDDER + "0.transformer.text_model."
    base = clip_l + "embeddings.token_embedding.weight" in shapes
    bigg = SDXL_EMBEDDER + ("1.model." if base else "0.model.")
    what = "SDXL" if base else "SDXL refiner"
    _require(shapes, [UNET + "input_blocks.0.0.weight", VAE + "encoder.conv_in.weight", bigg + "token_embedding.weight",
                      bigg + "text_projection", UNET + "label_emb.0.0.weight"], what)
    try:
        unet = detect_unet(shapes, num_heads=None, head_dim=64)
        # Both encoders: the penultimate layer without the final norm (sgm, legacy=False).
        g = detect_openclip_text(shapes, bigg, skip_last=1, final_norm=False)
        if base:
            text, text2 = detect_clip_text(shapes, clip_l, skip_last=1, final_norm=False, honour_clip_skip=False), g
            family = SDXL_INPAINT if unet.in_channels == 9 else SDXL
            numbers = 6  # original size (h, w), crop (top, left), target size (h, w)
        else:
            text, text2, family = g, None, SDXL_REFINER
            numbers = 5  # original size (h, w), crop (top, left), aesthetic score
        vae = detect_vae(shapes, scaling_factor=_scale(metadata, family))
    except KeyError as e:
        raise EngineError(f"incomplete {what} checkpoint: missing {e.args[0]}") from None
    if unet.in_channels not in (vae.embed_dim, 9):
        raise EngineError(f"unknown {what} variant: UNet takes {unet.in_channels} input channels")
    extra = unet.adm_in_channels - g.projection_dim
    if extra <= 0 or extra % numbers:
        raise EngineError(
            f"{what}: the UNet's added-conditioning input ({unet.adm_in_channels}) is not the pooled text "
            f"({g.projection_dim}) plus {numbers} size numbers"
        )
    context = sum(t.hidden_size for t in (text, text2) if t is not None)
    if context != unet.context_dim:
        raise EngineError(f"{what}: the text encoders give {context}-wide context, the UNet expects {unet.context_dim}")
    prediction, source = _prediction(metadata, "eps")
    return ModelSpec(
        family=family, unet=unet, vae=vae, text=text, text2=text2, prediction=prediction, prediction_source=source,
        size_embed_dim=extra // numbers,
    )


# --- the transformer families (SD 3.x, FLUX.1) ----------------------------------------------

def _flow_text_parts(shapes: dict, family: str) -> tuple[tuple[str, object], ...]:
    """The text encoders present under ``text_encoders.``, in the family's order, each with its
    config read from the shapes. CLIP-L and bigG give SD3 their penultimate layer without the
    final norm (diffusers' hidden_states[-2]) and a projected pooled vector; FLUX takes only
    CLIP-L's pooled output (no projection) and T5's last layer."""
    from core.models.t5 import detect_t5

    facts = family_of(family).flow
    parts = []
    for name in (*facts.encoders, *facts.optional_encoders):
        prefix = f"{FLOW_TEXT}{name}.transformer."
        if not any(k.startswith(prefix) for k in shapes):
            continue
        if name == "t5xxl":
            parts.append((name, detect_t5(shapes, f"{FLOW_TEXT}{name}.")))
            continue
        projection = shapes.get(prefix + "text_projection.weight")
        projected = family == SD3 and projection is not None
        parts.append((name, detect_clip_text(
            shapes, prefix + "text_model.", skip_last=1 if family == SD3 else 0, final_norm=family != SD3,
            honour_clip_skip=False, projection_dim=projection[0] if projected else None,
            hidden_act="gelu" if name == "clip_g" else "quick_gelu", pad_with_eos=name != "clip_g",
        )))
    return tuple(parts)


def missing_text_encoders(spec: ModelSpec) -> list[str]:
    """The text encoders this transformer-family spec needs and does not have."""
    present = {name for name, _ in spec.text_parts}
    return [name for name in spec.family_info.flow.encoders if name not in present]


def _flow_vae(shapes: dict, family: str, metadata: dict) -> VAEConfig:
    _require(shapes, [VAE + "encoder.conv_in.weight"], family_of(family).label)
    vae = detect_vae(shapes, scaling_factor=_scale(metadata, family))
    return dataclasses.replace(vae, shift_factor=family_of(family).latent.shift)


def _flow_spec(family: str, transformer, shapes: dict, metadata: dict) -> ModelSpec:
    parts = _flow_text_parts(shapes, family)
    clip_l = next((config for name, config in parts if name == "clip_l"), None)
    return ModelSpec(family=family, unet=None, vae=_flow_vae(shapes, family, metadata), text=clip_l,
                     prediction="flow", transformer=transformer, text_parts=parts)


def detect_sd3(shapes: dict, metadata: dict) -> ModelSpec:
    """SD 3 medium, 3.5 medium and large (large turbo is large's layout)."""
    from core.models.mmdit import detect_mmdit

    try:
        config = detect_mmdit({k[len(UNET):]: v for k, v in shapes.items() if k.startswith(UNET)})
    except (KeyError, ValueError) as e:
        raise EngineError(f"incomplete SD 3.x checkpoint: {e}") from None
    return _flow_spec(SD3, config, shapes, metadata)


def detect_flux_family(shapes: dict, metadata: dict) -> ModelSpec:
    """FLUX.1 dev (guidance_in: the distilled guidance input) or schnell (none)."""
    from core.models.flux import detect_flux

    try:
        config = detect_flux({k[len(UNET):]: v for k, v in shapes.items() if k.startswith(UNET)})
    except (KeyError, ValueError) as e:
        raise EngineError(f"incomplete FLUX.1 checkpoint: {e}") from None
    return _flow_spec(FLUX_DEV if config.guidance_embed else FLUX_SCHNELL, config, shapes, metadata)
