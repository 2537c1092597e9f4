"""Our models built at full size (on the meta device) have exactly the reference files' keys and shapes."""
import json

import pytest
import torch

from core.errors import EngineError
from core.loading import normalise_keys
from core.models.detection import (
    SD1, SD1_INPAINT, SD2, SD2_INPAINT, SDXL, SDXL_INPAINT, SDXL_REFINER, X4_UPSCALER, detect,
)
from core.models.stable_diffusion import LatentDiffusion
from tiny_models import REFERENCE_DIR

REFERENCE = REFERENCE_DIR


def reference_shapes(name: str) -> dict[str, tuple]:
    path = REFERENCE / name
    if not path.is_file():
        pytest.fail(f"reference manifest missing: {path}")
    return {k: tuple(v) for k, v in json.loads(path.read_text())["tensors"].items()}


@pytest.mark.parametrize("manifest,family,in_channels", [("sd15.json", SD1, 4), ("sd15_inpaint.json", SD1_INPAINT, 9)])
def test_full_size_model_matches_reference_layout(manifest, family, in_channels):
    shapes = reference_shapes(manifest)
    spec = detect(shapes)
    assert spec.family == family
    assert spec.unet.in_channels == in_channels
    assert spec.unet.channel_mult == (1, 2, 4, 4) and spec.unet.transformer_depth == (1, 1, 1, 0)
    assert spec.vae.downsample_factor == 8 and spec.text.num_layers == 12
    with torch.device("meta"):
        model = LatentDiffusion(spec)
    ours = {k: tuple(v.shape) for k, v in model.checkpoint_state_dict().items()}
    assert set(ours) == set(shapes), sorted(set(ours) ^ set(shapes))[:10]
    assert ours == shapes
    unet_params = sum(v.numel() for k, v in model.checkpoint_state_dict().items() if k.startswith("model.diffusion_model."))
    assert unet_params == (859_520_964 if in_channels == 4 else 859_535_364)


def test_variants_normalise_to_the_same_layout():
    shapes = reference_shapes("sd15.json")
    fake = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    variant = {}
    for key, value in fake.items():
        # Old merges: no text_model level; training files: EMA shadows, schedule buffers, position_ids.
        variant[key.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer.")] = value
    variant["model_ema.decay"] = torch.empty((), device="meta")
    variant["model_ema.diffusion_modelinput_blocks00weight"] = torch.empty(320, 4, 3, 3, device="meta")
    variant["alphas_cumprod"] = torch.empty(1000, device="meta")
    variant["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.empty(1, 77, device="meta")
    normalised = normalise_keys(variant)
    assert set(normalised) == set(shapes)


def test_unknown_and_unsupported_layouts_are_named():
    with pytest.raises(EngineError, match="unknown model layout.*model.diffusion_model.input_blocks.0.0.weight"):
        detect({"foo.weight": (3, 3), "bar.bias": (3,)})
    sd2 = reference_shapes("sd21_v.json")
    depth = {**sd2, "model.diffusion_model.input_blocks.0.0.weight": (320, 5, 3, 3), "depth_model.model.weight": (3,)}
    with pytest.raises(EngineError, match="depth"):
        detect(depth)
    sdxl = reference_shapes("sdxl_base.json")
    del sdxl["conditioner.embedders.1.model.text_projection"]
    with pytest.raises(EngineError, match="incomplete SDXL checkpoint.*text_projection"):
        detect(sdxl)


def meta_checkpoint(spec) -> dict[str, tuple]:
    with torch.device("meta"):
        model = LatentDiffusion(spec)
    return {k: tuple(v.shape) for k, v in model.checkpoint_state_dict().items()}


def component_params(ours: dict, prefix: str) -> int:
    total = 0
    for key, shape in ours.items():
        if key.startswith(prefix):
            count = 1
            for n in shape:
                count *= n
            total += count
    return total


# manifest, family, UNet / VAE / text parameter counts from the manifests' README
FAMILIES = [
    ("sd21_v.json", SD2, 865_910_724, 83_653_863, {"cond_stage_model.": 354_032_641}),
    ("sdxl_base.json", SDXL, 2_567_463_684, 83_653_863,
     {"conditioner.embedders.0.": 123_060_480, "conditioner.embedders.1.": 694_659_841}),
    ("x4_upscaler.json", X4_UPSCALER, 473_398_020, 55_325_927, {"cond_stage_model.": 354_032_641}),
]


@pytest.mark.parametrize("manifest,family,unet_params,vae_params,text_params", FAMILIES, ids=[f[1] for f in FAMILIES])
def test_sd2_sdxl_x4_match_reference_layouts(manifest, family, unet_params, vae_params, text_params):
    """Keys and shapes exactly (OpenCLIP q/k/v fused back, text_projection and logit_scale kept),
    and the manifests' parameter counts per component."""
    shapes = reference_shapes(manifest)
    spec = detect(shapes)
    assert spec.family == family
    ours = meta_checkpoint(spec)
    assert set(ours) == set(shapes), sorted(set(ours) ^ set(shapes))[:10]
    assert ours == shapes
    assert component_params(ours, "model.diffusion_model.") == unet_params
    assert component_params(ours, "first_stage_model.") == vae_params
    for prefix, count in text_params.items():
        assert component_params(ours, prefix) == count
    # Every checkpoint key names our parameter(s) (the fused in-projections: q, k, v thirds).
    with torch.device("meta"):
        model = LatentDiffusion(spec)
    params = dict(model.named_parameters())
    for key, shape in shapes.items():
        names = model.internal_names(key)
        assert names and all(name in params for name, _ in names), key
        if len(names) == 3:
            assert [third for _, third in names] == [0, 1, 2] and params[names[0][0]].shape[0] * 3 == shape[0]


def test_what_shapes_say_about_each_family():
    sd2 = detect(reference_shapes("sd21_v.json"))
    assert sd2.unet.head_dim == 64 and sd2.unet.use_linear_projection and sd2.unet.context_dim == 1024
    assert sd2.text.hidden_act == "gelu" and sd2.text.num_heads == 16 and sd2.text.num_layers == 24
    assert sd2.text.skip_last == 1 and sd2.text.final_norm and not sd2.text.pad_with_eos  # penultimate + ln_final
    assert sd2.prediction == "eps" and sd2.prediction_source == "default"  # shapes cannot tell: see test_sd2.py

    xl = detect(reference_shapes("sdxl_base.json"))
    assert xl.unet.transformer_depth == (0, 2, 10) and xl.unet.transformer_depth_middle == 10
    assert xl.unet.adm_in_channels == 2816 and xl.unet.context_dim == 2048 and xl.size_embed_dim == 256
    assert xl.vae.scaling_factor == 0.13025 and xl.default_size == 1024
    assert (xl.text.hidden_size, xl.text2.hidden_size, xl.text2.projection_dim, xl.text2.num_heads) == (768, 1280, 1280, 20)
    assert not xl.text.final_norm and not xl.text2.final_norm and xl.text.skip_last == xl.text2.skip_last == 1
    assert xl.embedding_key == "clip_l"

    x4 = detect(reference_shapes("x4_upscaler.json"))
    assert x4.prediction == "v" and x4.vae.downsample_factor == 4 and x4.vae.scaling_factor == 0.08333
    assert x4.unet.num_classes == 1000 and x4.unet.in_channels == 7 and x4.unet.num_heads == 8
    assert x4.unet.disable_self_attn == (False, True, True, False)  # level 0 has no attention at all
    assert (x4.linear_start, x4.linear_end, x4.low_scale) == (0.0001, 0.02, (0.0001, 0.02, 350))


@pytest.mark.parametrize("manifest,family", [("sd21_v.json", SD2_INPAINT), ("sdxl_base.json", SDXL_INPAINT)])
def test_nine_channel_inpainting_variants(manifest, family):
    shapes = reference_shapes(manifest)
    conv_in = "model.diffusion_model.input_blocks.0.0.weight"
    shapes[conv_in] = (shapes[conv_in][0], 9, 3, 3)
    spec = detect(shapes)
    assert spec.family == family
    assert meta_checkpoint(spec) == shapes


def test_sdxl_refiner_layout():
    """No manifest for the refiner: its UNet is diffusers' refiner UNet (on the meta device)
    under our single-file names, its text encoder the base's bigG tower moved to embedder 0."""
    from diffusers import UNet2DConditionModel

    from core.models import diffusers_names

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            in_channels=4, out_channels=4, block_out_channels=(384, 768, 1536, 1536), layers_per_block=2,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=4, attention_head_dim=(6, 12, 24, 24), cross_attention_dim=1280,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2560,
        )
    unet_shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    base = reference_shapes("sdxl_base.json")
    shapes = {"model.diffusion_model." + diffusers_names.unet_key(k, unet_shapes): v for k, v in unet_shapes.items()}
    shapes.update({k: v for k, v in base.items() if k.startswith("first_stage_model.")})
    bigg = "conditioner.embedders.1."
    shapes.update({"conditioner.embedders.0." + k[len(bigg):]: v for k, v in base.items() if k.startswith(bigg)})
    spec = detect(shapes)
    assert spec.family == SDXL_REFINER and spec.text2 is None and spec.embedding_key == "clip_g"
    assert spec.unet.model_channels == 384 and spec.unet.adm_in_channels == 2560 and spec.size_embed_dim == 256
    assert spec.unet.transformer_depth == (0, 4, 4, 0) and spec.unet.transformer_depth_middle == 4
    assert meta_checkpoint(spec) == shapes


def test_sdxl_and_x4_variants_normalise_to_the_manifest_layout():
    """Optional keys (position_ids, sgm's denoiser.sigmas, schedule buffers of both x4 models)
    and CLIP-L without the text_model level all load as the manifest's layout."""
    for manifest, extras in (
        ("sdxl_base.json", {"denoiser.sigmas": (1000,), "conditioner.embedders.0.transformer.text_model.embeddings.position_ids": (1, 77),
                            "conditioner.embedders.1.model.transformer.text_model.embeddings.position_ids": (1, 77)}),
        ("x4_upscaler.json", {"betas": (1000,), "low_scale_model.alphas_cumprod": (1000,), "low_scale_model.betas": (1000,)}),
    ):
        shapes = reference_shapes(manifest)
        variant = {k.replace("embedders.0.transformer.text_model.", "embedders.0.transformer."): torch.empty(s, device="meta")
                   for k, s in shapes.items()}
        variant.update({k: torch.empty(s, device="meta") for k, s in extras.items()})
        assert set(normalise_keys(variant)) == set(shapes)
