"""Extra networks (issue #17): the cards' listing, previews and metadata, the prompt's token
count as A1111 shows it, the paste-parameters button and separate VAE files (the engine's swap,
the page's menu, the API's sd_vae). The browser's side is tests/test_browser_extranet.py."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.errors import EngineError

pytestmark = pytest.mark.usefixtures("one_thread")


# --- token counts ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    from core.text.tokenizer import load_clip_tokenizer

    return load_clip_tokenizer()


def count(tokenizer, prompt, embeddings=None, steps=20):
    from core.conditioning import prompt_token_count

    return prompt_token_count(tokenizer, prompt, steps, embeddings)


def test_token_counts_grow_by_chunks_of_75(tokenizer):
    assert count(tokenizer, "") == (0, 75)
    assert count(tokenizer, "a cat") == (2, 75)
    assert count(tokenizer, " ".join(["cat"] * 75)) == (75, 75)
    assert count(tokenizer, " ".join(["cat"] * 80)) == (80, 150)
    assert count(tokenizer, " ".join(["cat"] * 151)) == (151, 225)


def test_emphasis_brackets_and_weights_are_not_tokens(tokenizer):
    assert count(tokenizer, "(cat:1.5) [dog] ((bird))") == (3, 75)
    assert count(tokenizer, "\\(cat\\)")[0] == 3  # escaped brackets are text


def test_break_fills_its_chunk_and_tags_are_not_counted(tokenizer):
    assert count(tokenizer, "cat BREAK dog") == (76, 150)
    assert count(tokenizer, "cat BREAK dog BREAK bird") == (151, 225)
    assert count(tokenizer, "<lora:style:0.8> cat, dog") == (3, 75)


def test_and_and_prompt_editing_count_their_longest_text(tokenizer):
    assert count(tokenizer, "cat AND dog dog dog") == (3, 75)
    assert count(tokenizer, "[cat:dog dog dog dog:5] bird") == (5, 75)


def test_a_chunk_cut_at_a_comma_counts_whole(tokenizer):
    words = ["cat"] * 70 + [","] + ["dog"] * 10  # the chunk is cut after the comma: 75 + 10
    assert count(tokenizer, " ".join(words)) == (85, 150)


def test_an_embedding_counts_its_vectors(tokenizer):
    from core.embeddings import Embedding, EmbeddingDatabase

    database = EmbeddingDatabase(None, tokenizer, 8)
    database.add(Embedding("mystyle", torch.zeros(6, 8), Path("mystyle.pt")), tokenizer)
    assert count(tokenizer, "a mystyle cat", database) == (8, 75)


def test_the_engine_and_the_fake_count_alike(tmp_path):
    from fake_engine import FakeEngine

    assert FakeEngine(tmp_path).count_tokens(" ".join(["cat"] * 80)) == (80, 150)


# --- metadata ------------------------------------------------------------------------------

def lora_file(path: Path, metadata: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(path), metadata=metadata)
    return path


def test_training_tags_are_summed_most_frequent_first(tmp_path):
    from core.network_info import network_info

    tags = {"10_people": {"red hair": 3, "smile": 9}, "5_more": {"red hair": 8, "hat": 1}}
    path = lora_file(tmp_path / "style.safetensors", {
        "ss_tag_frequency": json.dumps(tags), "ss_sd_model_name": "v1-5-pruned.safetensors",
        "ss_resolution": "(512, 512)", "ss_network_dim": "16"})
    info = network_info(path)
    assert info.tags == [("red hair", 11), ("smile", 9), ("hat", 1)]
    assert ("Base model", "v1-5-pruned.safetensors") in info.fields
    assert ("Resolution", "(512, 512)") in info.fields


def test_metadata_of_files_without_a_header_is_empty(tmp_path):
    from core.network_info import network_info

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(struct.pack("<Q", 10**12) + b"{}")  # a header length far past the file
    plain = lora_file(tmp_path / "plain.safetensors")
    pickled = tmp_path / "old.pt"
    torch.save({"x": torch.zeros(1)}, pickled)
    for path in (broken, plain, pickled):
        info = network_info(path)
        assert (info.fields, info.tags) == ([], [])


def test_odd_tag_frequency_values_are_skipped(tmp_path):
    from core.network_info import training_tags

    assert training_tags({"ss_tag_frequency": "not json"}) == []
    assert training_tags({"ss_tag_frequency": json.dumps({"a": {"x": "many", "y": 2}, "b": 3})}) == [("y", 2)]
