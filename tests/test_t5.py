"""core/models/t5.py (the T5 v1.1 encoder of SD3 and FLUX.1) and core/text/t5_tokenizer.py.

The encoder is checked against transformers' T5EncoderModel loaded the way diffusers' pipelines load
it (``from_pretrained`` of a folder whose config.json has google/t5-v1_1-xxl's keys, scaled down), on
tiny random weights; the full-size layout on the meta device against tests/reference/t5xxl_encoder.json.
The tokenizer is checked against transformers' T5TokenizerFast reading the same tokenizer.json."""
from __future__ import annotations

import json

import pytest
import torch

from core.models.normalization import cast_keeping_float32, float32_parameter_names
from core.models.t5 import T5XXL_PREFIX, T5Encoder, T5EncoderConfig, detect_t5
from tiny_models import REFERENCE_DIR
from tiny_flow_models import write_t5_tokenizer_json

MANIFEST = json.loads((REFERENCE_DIR / "t5xxl_encoder.json").read_text())
# google/t5-v1_1-xxl's config.json with the sizes cut (heads stay several, buckets the real 32).
TINY_HF_CONFIG = dict(
    architectures=["T5EncoderModel"], d_ff=48, d_kv=8, d_model=32, num_heads=4, num_layers=3, vocab_size=100,
    feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True, relative_attention_num_buckets=32,
    relative_attention_max_distance=128, layer_norm_epsilon=1e-6, tie_word_embeddings=False, dropout_rate=0.1,
    model_type="t5", pad_token_id=0, eos_token_id=1,
)
TINY = T5EncoderConfig(vocab_size=100, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4)


def tiny_checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random T5 weights in the bundled layout (``text_encoders.t5xxl.transformer.*``), the embedding
    once, as ``shared.weight`` (as in ComfyUI's t5xxl files)."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    reference = T5EncoderModel(T5Config(**TINY_HF_CONFIG))
    generator = torch.Generator().manual_seed(seed)
    file = {}
    for key, value in reference.state_dict().items():
        if key == "encoder.embed_tokens.weight":
            continue
        # Layer norm scales away from 1 so that a scale applied to the wrong tensor shows.
        random = torch.randn(value.shape, generator=generator)
        file[T5XXL_PREFIX + "transformer." + key] = 1 + 0.2 * random if key.endswith("layer_norm.weight") else 0.3 * random
    return file


def relative(state: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}


def load_ours(file: dict) -> T5Encoder:
    shapes = {key: tuple(value.shape) for key, value in file.items()}
    encoder = T5Encoder(detect_t5(shapes))
    missing, unexpected = encoder.load_state_dict(T5Encoder.from_checkpoint(relative(file, T5XXL_PREFIX)), strict=True)
    assert (missing, unexpected) == ([], [])
    return encoder


def transformers_reference(file: dict, folder):
    """T5EncoderModel as a diffusers pipeline gets it: from_pretrained of a saved folder."""
    from safetensors.torch import save_file
    from transformers import T5EncoderModel

    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_HF_CONFIG))
    save_file({k: v.contiguous() for k, v in relative(file, T5XXL_PREFIX + "transformer.").items()}, folder / "model.safetensors")
    return T5EncoderModel.from_pretrained(folder).eval()


def test_detect_t5_reads_every_size_from_the_shapes():
    shapes = {key: tuple(value.shape) for key, value in tiny_checkpoint().items()}
    assert detect_t5(shapes) == TINY
    full = {T5XXL_PREFIX + "transformer." + key: tuple(shape) for key, shape in MANIFEST["tensors"].items()}
    assert detect_t5(full) == T5EncoderConfig()
    assert T5EncoderConfig() == T5EncoderConfig(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)
    # T5 1.0's feed-forward (relu(wi x), no gate) and a file holding only the tied embedding name.
    ungated = {key.replace("wi_0", "wi").replace("shared.weight", "encoder.embed_tokens.weight"): shape
               for key, shape in shapes.items() if "wi_1" not in key}
    assert detect_t5(ungated) == T5EncoderConfig(**{**TINY.__dict__, "gated_gelu": False})


def test_full_size_t5xxl_builds_on_meta_with_the_manifest_layout():
    with torch.device("meta"):
        encoder = T5Encoder(T5EncoderConfig())
    state = T5Encoder.to_checkpoint(encoder.state_dict())
    assert {key: list(value.shape) for key, value in state.items()} == {
        "transformer." + key: shape for key, shape in MANIFEST["tensors"].items()
    }
    assert sum(value.numel() for value in state.values()) == MANIFEST["parameters"] == 4_762_310_656  # known ≈4.76B
    assert set(encoder.state_dict()) - set(state) == {"transformer." + key for key in MANIFEST["tied_keys"]}


def test_encoder_matches_transformers_from_pretrained(tmp_path):
    file = tiny_checkpoint()
    ours, reference = load_ours(file), transformers_reference(file, tmp_path / "text_encoder_3")
    ids = torch.tensor([[5, 17, 99, 3, 1, 0, 0, 0], [42, 1, 0, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        expected = reference(input_ids=ids).last_hidden_state
        got = ours.encode(ids)  # ours is left in training mode: the encoder must have no dropout
    assert got.dtype == torch.float32 and got.shape == (2, 8, TINY.d_model)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.abs().mean() > 0.1  # not a degenerate (zero) context


def test_checkpoint_names_round_trip_with_either_embedding_name():
    file = relative(tiny_checkpoint(), T5XXL_PREFIX)
    embedding = file["transformer.shared.weight"]
    only_tied = {("transformer.encoder.embed_tokens.weight" if k == "transformer.shared.weight" else k): v for k, v in file.items()}
    for variant in (file, only_tied):
        ours = T5Encoder.from_checkpoint(variant)
        assert ours["transformer.shared.weight"] is embedding and ours["transformer.encoder.embed_tokens.weight"] is embedding
    assert T5Encoder.to_checkpoint(load_ours(tiny_checkpoint()).state_dict()).keys() == file.keys()


def test_tie_embedding_shares_one_table_after_a_load_by_assignment():
    file = T5Encoder.from_checkpoint(relative(tiny_checkpoint(), T5XXL_PREFIX))
    with torch.device("meta"):
        encoder = T5Encoder(TINY)
    encoder.load_state_dict({key: value.clone() for key, value in file.items()}, assign=True)
    transformer = encoder.transformer
    assert transformer.encoder.embed_tokens.weight is not transformer.shared.weight  # two copies, as a loader leaves them
    encoder.tie_embedding()
    assert transformer.encoder.embed_tokens.weight is transformer.shared.weight
    torch.testing.assert_close(encoder.encode(torch.tensor([[3, 1]])), load_ours(tiny_checkpoint()).encode(torch.tensor([[3, 1]])))


def overflowing_checkpoint() -> dict[str, torch.Tensor]:
    """Tiny weights whose feed-forward outputs pass float16's 65504, as T5 v1.1 XXL's deep layers do;
    the layer norms bring every later input back to a normal size."""
    file = tiny_checkpoint(seed=1)
    for key in file:
        if key.endswith("DenseReluDense.wo.weight"):
            file[key] = file[key] * 3000
    return file


def test_float16_keeps_the_feed_forward_outputs_float32():
    encoder = cast_keeping_float32(load_ours(overflowing_checkpoint()), torch.float16)
    wo = {name for name, p in encoder.named_parameters() if p.dtype == torch.float32}
    assert wo == set(encoder.float16_overflowing_parameters) == {
        f"transformer.encoder.block.{i}.layer.1.DenseReluDense.wo.weight" for i in range(TINY.num_layers)}
    assert all(p.dtype == torch.float16 for name, p in encoder.named_parameters() if name not in wo)
    # What the loader is told: float32 for float16 (and when it does not say which low precision), not for bfloat16.
    assert set(encoder.float16_overflowing_parameters) <= float32_parameter_names(encoder, torch.float16)
    assert set(encoder.float16_overflowing_parameters) <= float32_parameter_names(encoder)
    assert not set(encoder.float16_overflowing_parameters) & float32_parameter_names(encoder, torch.bfloat16)


def test_float16_encoder_stays_close_where_a_plain_half_cast_overflows():
    file = overflowing_checkpoint()
    ids = torch.tensor([[7, 21, 64, 9, 33, 1, 0, 0]])
    with torch.no_grad():
        exact = load_ours(file).encode(ids)
        plain = load_ours(file).half().encode(ids)
        kept = cast_keeping_float32(load_ours(file), torch.float16).encode(ids)
    # transformers clamps a float16 residual that went inf to 64504: finite, but wrong (0.8 off here).
    assert (plain - exact).abs().max() > 0.3
    assert torch.isfinite(kept).all()
    torch.testing.assert_close(kept, exact, atol=2e-2, rtol=2e-2)  # float16's own rounding (0.01 here)


# --- the tokenizer ----------------------------------------------------------------------------------

PROMPTS = [
    "a photo of the cat",
    "a red dog on the mat, sleeping.",
    "",
    "cats  and   dogs",  # runs of spaces
    "Ünïcode and UPPER case: 42 €",  # pieces the vocabulary lacks -> <unk>
    " ".join(["the red cat on the mat"] * 12),  # longer than max_length: truncated, </s> kept
]


def write_clip_like_tokenizer_json(path):
    from tokenizers import Tokenizer, models

    path.parent.mkdir(parents=True, exist_ok=True)
    Tokenizer(models.BPE({"a": 0, "b": 1, "ab": 2, "</s>": 3}, [("a", "b")])).save(str(path))
    return path


@pytest.mark.parametrize("max_length", [16, 5, 1])
def test_tokenizer_ids_match_transformers_t5_tokenizer_fast(tmp_path, max_length):
    from transformers import T5TokenizerFast

    from core.text.t5_tokenizer import T5Tokenizer

    path = write_t5_tokenizer_json(tmp_path / "tokenizer.json")
    ours, reference = T5Tokenizer(path), T5TokenizerFast(tokenizer_file=str(path))
    expected = reference(PROMPTS, padding="max_length", max_length=max_length, truncation=True).input_ids
    got = ours(PROMPTS, max_length=max_length)
    assert got.dtype == torch.long and got.tolist() == expected
    assert (ours.pad_id, ours.eos_id) == (0, 1)
    if max_length == 16:
        assert (got == 2).any() and got[0, :6].tolist() == [4, 5, 6, 7, 8, 1]  # <unk> seen; "a photo of the cat</s>"
    assert ours("a photo of the cat", max_length).tolist() == got[:1].tolist()  # one text, not a list


def test_token_counts_exclude_the_end_of_sequence(tmp_path):
    from transformers import T5TokenizerFast

    from core.text.t5_tokenizer import T5Tokenizer

    path = write_t5_tokenizer_json(tmp_path / "tokenizer.json")
    ours, reference = T5Tokenizer(path), T5TokenizerFast(tokenizer_file=str(path))
    for prompt in PROMPTS:
        assert ours.count_tokens(prompt) == len(reference(prompt, add_special_tokens=False).input_ids)
    assert ours.count_tokens("a photo of the cat") == 5 and ours.count_tokens("") == 0


def test_find_t5_tokenizer_in_diffusers_folders_and_beside_checkpoints(tmp_path):
    from core.text.t5_tokenizer import find_t5_tokenizer

    sd3 = write_t5_tokenizer_json(tmp_path / "sd3" / "tokenizer_3" / "tokenizer.json")
    flux = write_t5_tokenizer_json(tmp_path / "flux" / "tokenizer_2" / "tokenizer.json")
    write_clip_like_tokenizer_json(tmp_path / "sdxl" / "tokenizer_2" / "tokenizer.json")
    write_clip_like_tokenizer_json(tmp_path / "checkpoints" / "tokenizer.json")
    beside = write_t5_tokenizer_json(tmp_path / "text_encoder" / "tokenizer.json")
    assert find_t5_tokenizer([tmp_path / "sd3"]) == sd3
    assert find_t5_tokenizer([tmp_path / "flux"]) == flux
    # A CLIP tokenizer (SDXL's tokenizer_2, one beside a checkpoint) is passed over; the folders' order counts.
    assert find_t5_tokenizer([tmp_path / "sdxl", tmp_path / "checkpoints", tmp_path / "missing"]) is None
    assert find_t5_tokenizer([tmp_path / "checkpoints", tmp_path / "text_encoder", tmp_path / "flux"]) == beside
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "tokenizer.json").write_text("{not json")
    assert find_t5_tokenizer([tmp_path / "broken"]) is None
    # tokenizer.json is preferred to spiece.model in one place; spiece.model alone is found.
    (tmp_path / "text_encoder" / "spiece.model").write_bytes(b"\x00")
    assert find_t5_tokenizer([tmp_path / "text_encoder"]) == beside
    (tmp_path / "spm").mkdir()
    (tmp_path / "spm" / "spiece.model").write_bytes(b"\x00")
    assert find_t5_tokenizer([tmp_path / "spm"]) == tmp_path / "spm" / "spiece.model"


def test_spiece_model_without_sentencepiece_says_what_is_missing(tmp_path):
    from core.errors import EngineError
    from core.text.t5_tokenizer import T5Tokenizer

    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("sentencepiece is installed here")
    (tmp_path / "spiece.model").write_bytes(b"\x00")
    with pytest.raises(EngineError, match="needs the 'sentencepiece' module.*tokenizer.json"):
        T5Tokenizer(tmp_path / "spiece.model")


def test_a_tokenizer_without_t5_special_pieces_is_refused(tmp_path):
    from core.errors import EngineError
    from core.text.t5_tokenizer import T5Tokenizer

    path = write_clip_like_tokenizer_json(tmp_path / "tokenizer.json")
    with pytest.raises(EngineError, match="not a T5 tokenizer: it has no <pad>"):
        T5Tokenizer(path)
