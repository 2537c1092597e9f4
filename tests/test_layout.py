"""Our models built at full size (on the meta device) have exactly the reference files' keys and shapes."""
import json
from pathlib import Path

import pytest
import torch

from core.errors import EngineError
from core.loading import normalise_keys
from core.models.detection import SD1, SD1_INPAINT, detect
from core.models.stable_diffusion import LatentDiffusion

REFERENCE = Path(__file__).resolve().parent.parent.parent / "shared" / "reference"


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
    sdxl = reference_shapes("sdxl_base.json")
    with pytest.raises(EngineError, match="SDXL"):
        detect(sdxl)
    sd2 = reference_shapes("sd21_v.json")
    with pytest.raises(EngineError, match="SD 2"):
        detect(sd2)
