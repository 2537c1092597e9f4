"""The released SD 3.x and FLUX.1 single files at full size, without their weights: each family's
bundled-checkpoint layout assembled from key/shape manifests derived from the public configs
(tests/reference: the transformers, T5-XXL, the VAE; CLIP-L from the real SDXL file's layout; bigG
in transformers' layout built on the meta device from its public config), detected into the family
registry and built on the meta device: our module tree must hold exactly the file's keys and
shapes, so a real file loads with no conversion table."""
from __future__ import annotations

import json

import pytest
import torch

from core.models.detection import detect
from core.models.flow_model import LatentFlow
from tiny_models import REFERENCE_DIR

CLIP_L_PROJECTION = 768  # SD3's CLIP-L is a CLIPTextModelWithProjection (768 -> 768)


def manifest(name: str) -> dict:
    return json.loads((REFERENCE_DIR / name).read_text())


def prefixed(prefix: str, tensors: dict) -> dict[str, tuple]:
    return {prefix + key: tuple(shape) for key, shape in tensors.items()}


def vae16_shapes() -> dict[str, tuple]:
    """The SD VAE's layout less its quant convolutions, 16 latent channels (test_vae16 checks it)."""
    tensors = {k: v for k, v in manifest("vae_standalone.json")["tensors"].items() if "quant_conv" not in k}
    tensors["encoder.conv_out.weight"], tensors["encoder.conv_out.bias"] = [32, 512, 3, 3], [32]
    tensors["decoder.conv_in.weight"] = [512, 16, 3, 3]
    return prefixed("first_stage_model.", tensors)


def clip_l_shapes(projection: bool) -> dict[str, tuple]:
    sdxl = manifest("sdxl_base.json")["tensors"]
    source = "conditioner.embedders.0.transformer.text_model."
    shapes = {"text_encoders.clip_l.transformer.text_model." + k[len(source):]: tuple(v) for k, v in sdxl.items()
              if k.startswith(source) and not k.endswith("position_ids")}
    if projection:
        shapes["text_encoders.clip_l.transformer.text_projection.weight"] = (CLIP_L_PROJECTION, 768)
    return shapes


def clip_g_shapes() -> dict[str, tuple]:
    """OpenCLIP bigG as SD3's files store it: transformers' CLIPTextModelWithProjection (public
    config: width 1280, 32 layers, 20 heads, MLP 5120, projection 1280), built on meta."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with torch.device("meta"):
        model = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20, projection_dim=1280,
            hidden_act="gelu", max_position_embeddings=77, vocab_size=49408))
    shapes = {}
    for key, value in model.state_dict().items():
        if key.endswith("position_ids"):
            continue
        key = key if key.startswith(("text_model.", "text_projection")) else "text_model." + key  # transformers 5 drops the level
        shapes["text_encoders.clip_g.transformer." + key] = tuple(value.shape)
    return shapes


def t5_shapes() -> dict[str, tuple]:
    t5 = manifest("t5xxl_encoder.json")
    return prefixed(t5["key_prefix_in_bundled_files"], t5["tensors"])


def sd3_file(name: str) -> dict[str, tuple]:
    return {**prefixed("model.diffusion_model.", manifest(name)["tensors"]), **vae16_shapes(), **clip_l_shapes(True),
            **clip_g_shapes(), **t5_shapes()}


def flux_file(kind: str) -> dict[str, tuple]:
    flux = manifest("flux1_transformer.json")
    tensors = {k: v for k, v in flux["tensors"].items() if kind == "dev" or k not in flux["schnell_lacks"]}
    return {**prefixed(flux["key_prefix_in_bundled_files"], tensors), **vae16_shapes(), **clip_l_shapes(False), **t5_shapes()}


FILES = {
    "sd3_medium": (lambda: sd3_file("mmdit_sd3_medium.json"), "sd3"),
    "sd35_medium": (lambda: sd3_file("mmdit_sd35_medium.json"), "sd3"),
    "sd35_large": (lambda: sd3_file("mmdit_sd35_large.json"), "sd3"),
    "flux1_dev": (lambda: flux_file("dev"), "flux-dev"),
    "flux1_schnell": (lambda: flux_file("schnell"), "flux-schnell"),
}


@pytest.mark.parametrize("name", list(FILES))
def test_full_size_bundled_file_is_detected_and_built_with_the_files_own_keys(name):
    make, family = FILES[name]
    shapes = make()
    spec = detect(shapes)
    assert spec.family == family
    assert [part for part, _ in spec.text_parts] == (["clip_l", "clip_g", "t5xxl"] if family == "sd3" else ["clip_l", "t5xxl"])
    with torch.device("meta"):
        model = LatentFlow(spec)
    ours = {key: tuple(value.shape) for key, value in model.checkpoint_state_dict().items()}
    assert ours == shapes
    # Every part read at its released size.
    configs = dict(spec.text_parts)
    assert (configs["clip_l"].hidden_size, configs["clip_l"].num_layers) == (768, 12)
    assert (configs["t5xxl"].d_model, configs["t5xxl"].num_layers, configs["t5xxl"].num_heads) == (4096, 24, 64)
    if family == "sd3":
        g = configs["clip_g"]
        assert (g.hidden_size, g.num_layers, g.projection_dim, g.hidden_act, g.pad_with_eos) == (1280, 32, 1280, "gelu", False)
        assert (configs["clip_l"].skip_last, configs["clip_l"].final_norm) == (1, False)  # hidden_states[-2]
    assert (spec.vae.z_channels, spec.vae.use_quant_conv) == (16, False)
    assert spec.latent_format.scaling_factor == (1.5305 if family == "sd3" else 0.3611)


def test_full_size_parameter_counts_are_the_released_models():
    """Transformer + VAE + encoders, as the model cards count them (FLUX.1 dev 11.9B + T5-XXL 4.76B ...)."""
    counts = {}
    for name in ("sd35_large", "flux1_dev"):
        with torch.device("meta"):
            model = LatentFlow(detect(FILES[name][0]()))
        # Parameters (T5's tied embedding once) and stored buffers (SD3's position table).
        counts[name] = {part: sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())
                        for part, module in (("transformer", model.unet), ("vae", model.vae), *model.text_encoders.items())}
    assert counts["flux1_dev"]["transformer"] == manifest("flux1_transformer.json")["parameters"]["dev"]
    assert counts["sd35_large"]["transformer"] == manifest("mmdit_sd35_large.json")["parameters"]
    t5 = manifest("t5xxl_encoder.json")["parameters"]
    assert counts["flux1_dev"]["t5xxl"] == counts["sd35_large"]["t5xxl"] == t5
    assert round(counts["flux1_dev"]["vae"] / 1e6) == 84  # the 16-channel VAE: 83.8M
    assert round(counts["sd35_large"]["clip_g"] / 1e6) == 695  # OpenCLIP bigG text tower with projection
