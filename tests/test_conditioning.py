"""Prompt text -> conditioning, as A1111 computes it: emphasis, chunks, BREAK, embeddings,
prompt editing, alternation and AND, checked on the tiny model's real text encoder."""
import logging

import pytest
import torch
from safetensors.torch import save_file

from core.conditioning import CHUNK, TextConditioner, tokenize_prompt
from core.embeddings import EmbeddingDatabase
from core.loading import load_model
from core.pipelines.guidance import build_guided_denoiser, prepare_prompt
from core.text.tokenizer import load_clip_tokenizer


@pytest.fixture(scope="module")
def model(tiny_checkpoints):
    return load_model(tiny_checkpoints["safetensors"])


@pytest.fixture(scope="module")
def tokenizer():
    return load_clip_tokenizer()


def conditioner(model, tokenizer, **kwargs):
    return TextConditioner(model.text_encoder, tokenizer, **kwargs)


def test_weight_one_is_exactly_the_plain_prompt(model, tokenizer):
    c = conditioner(model, tokenizer)
    plain = c.encode("a red cat on a mat")
    assert torch.equal(c.encode("a red (cat:1.0) on a mat"), plain)
    assert not torch.equal(c.encode("a red (cat:1.3) on a mat"), plain)


def test_short_prompt_equals_the_padded_ids_encoding(model, tokenizer):
    ids = torch.tensor([tokenizer.encode_padded("a red cat")])
    direct = model.text_encoder(ids)[0]
    assert torch.allclose(conditioner(model, tokenizer).encode("a red cat"), direct, atol=1e-6)


def test_emphasis_modes(model, tokenizer):
    text = "a (red:1.5) cat, [blue] dog"
    original = conditioner(model, tokenizer, emphasis="Original").encode(text)
    no_norm = conditioner(model, tokenizer, emphasis="No norm").encode(text)
    none = conditioner(model, tokenizer, emphasis="None").encode(text)
    plain = conditioner(model, tokenizer).encode("a red cat, blue dog")
    assert torch.allclose(none, plain, atol=1e-6)  # "None" ignores weights entirely
    assert torch.allclose(original.mean(), plain.mean(), atol=1e-5)  # Original restores the mean
    assert not torch.allclose(no_norm.mean(), plain.mean(), atol=1e-5)
    red = 1 + tokenizer.encode("a").__len__()  # position of "red" after the start token
    assert torch.allclose(no_norm[red], plain[red] * 1.5, atol=1e-5)


def test_76_tokens_make_two_chunks_and_75_one(model, tokenizer):
    c = conditioner(model, tokenizer)
    assert len(tokenizer.encode("cat " * 75)) == 75
    assert c.encode("cat " * 75).shape[0] == 77
    assert c.encode("cat " * 76).shape[0] == 154
    chunks = tokenize_prompt(tokenizer, "cat " * 76)
    assert [len(ch.tokens) for ch in chunks] == [77, 77]
    assert chunks[1].tokens[:3] == [tokenizer.bos_id, tokenizer.encode("cat")[0], tokenizer.eos_id]


def test_chunk_is_cut_after_a_comma_within_reach(tokenizer):
    # 70 words, a comma, then 10 words: the chunk fills at 75 tokens, 4 tokens after the comma,
    # so everything after the comma moves to the second chunk.
    text = "cat " * 70 + ", " + "dog " * 10
    chunks = tokenize_prompt(tokenizer, text)
    dog = tokenizer.encode("dog")[0]
    comma = tokenizer.comma_id
    first = chunks[0].tokens
    assert first[71] == comma and first[72] == tokenizer.eos_id  # cut right after the comma
    assert chunks[1].tokens[1:11] == [dog] * 10
    # A comma further back than 20 tokens is not used.
    far = tokenize_prompt(tokenizer, "cat " * 10 + ", " + "dog " * 70)
    assert far[0].tokens[12:76] == [tokenizer.encode("dog")[0]] * 64


def test_break_starts_a_new_chunk(model, tokenizer):
    chunks = tokenize_prompt(tokenizer, "a red cat BREAK a blue dog")
    assert len(chunks) == 2
    assert chunks[1].tokens[1:4] == tokenizer.encode("a blue dog")
    assert conditioner(model, tokenizer).encode("a red cat BREAK a blue dog").shape[0] == 154


def test_negative_and_positive_are_padded_to_the_same_length(model, tokenizer):
    c = conditioner(model, tokenizer)
    batch = c.encode_batch(["cat " * 80, "blurry"])
    assert batch.shape[:2] == (2, 154)
    assert torch.equal(batch[1, 77:], c.encode("")[:77])  # padded with an encoded empty chunk


class Recorder:
    """A denoiser that returns its context's mean, so the chosen conditioning is visible."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, context):
        self.calls.append(context)
        return x * 0 + context.mean(dim=(1, 2))[:, None, None, None]


def run_steps(model, tokenizer, prompt, negative, steps, cfg=7.0):
    c = conditioner(model, tokenizer)
    recorder = Recorder()
    guided = build_guided_denoiser(recorder, c, prepare_prompt(prompt, negative, steps), cfg)
    outputs = []
    for step in range(steps):
        guided.step = step
        outputs.append(guided(torch.zeros(1, 4, 2, 2), torch.tensor(1.0)))
    return c, recorder, outputs


def test_prompt_editing_switches_at_the_right_step(model, tokenizer):
    c, recorder, _ = run_steps(model, tokenizer, "a [cat:dog:4] on a mat", "", 10)
    cat, dog = c.encode("a cat on a mat"), c.encode("a dog on a mat")
    used = [call[1] for call in recorder.calls]  # [uncond, cond] per call
    assert all(torch.equal(u, cat) for u in used[:5])  # steps 0..4: A1111's "step <= end_at_step"
    assert all(torch.equal(u, dog) for u in used[5:])


def test_alternation_alternates(model, tokenizer):
    c, recorder, _ = run_steps(model, tokenizer, "a [cat|dog] on a mat", "", 6)
    cat, dog = c.encode("a cat on a mat"), c.encode("a dog on a mat")
    used = [call[1] for call in recorder.calls]
    # A1111 numbers alternation steps from 1 but samples from step 0 with "step <= end", so the
    # first option covers steps 0 and 1, then they alternate every step.
    assert [torch.equal(u, cat) for u in used] == [True, True, False, True, False, True]
    assert [torch.equal(u, dog) for u in used] == [False, False, True, False, True, False]


def test_and_combines_weighted_sub_prompts(model, tokenizer):
    c, recorder, outputs = run_steps(model, tokenizer, "a cat AND a dog :0.5", "blurry", 1, cfg=7.0)
    uncond, cat, dog = (c.encode(t).mean() for t in ("blurry", "a cat", "a dog"))
    expected = uncond + 7.0 * (1.0 * (cat - uncond) + 0.5 * (dog - uncond))
    assert torch.allclose(outputs[0], expected.expand_as(outputs[0]), atol=1e-5)
    assert recorder.calls[0].shape[0] == 3  # one batched call: uncond + two sub-prompts


def test_cfg_one_skips_the_unconditional_pass(model, tokenizer):
    _, recorder, _ = run_steps(model, tokenizer, "a cat", "blurry", 1, cfg=1.0)
    assert recorder.calls[0].shape[0] == 1


def test_extra_network_tags_are_removed_from_the_text(model, tokenizer):
    prepared = prepare_prompt("a cat <lora:pastel:0.8> on a mat", "", 10)
    assert prepared.positive[0][0][0][1] == "a cat  on a mat"
    assert [(t.kind, t.name, t.args) for t in prepared.extra_networks] == [("lora", "pastel", ["0.8"])]


def test_textual_inversion_embeddings(model, tokenizer, tmp_path, caplog):
    hidden = model.spec.text.hidden_size
    vectors = torch.randn(3, hidden, generator=torch.Generator().manual_seed(0))
    torch.save({"string_to_param": {"*": vectors}, "name": "glowstyle", "step": 100}, tmp_path / "glowstyle.pt")
    save_file({"emb_params": vectors[:2].contiguous()}, tmp_path / "duo.safetensors")
    save_file({"emb_params": torch.zeros(1, hidden + 1)}, tmp_path / "wide.safetensors")
    with caplog.at_level(logging.WARNING):
        db = EmbeddingDatabase(tmp_path, tokenizer, hidden)
    assert set(db.by_name) == {"glowstyle", "duo"}
    assert "wide" in db.skipped and "wide.safetensors" in caplog.text

    chunks = tokenize_prompt(tokenizer, "a glowstyle cat", db)
    a = tokenizer.encode("a")
    assert chunks[0].tokens[1:6] == [*a, 0, 0, 0, tokenizer.encode("cat")[0]]
    assert chunks[0].fixes[0][0] == 2 and torch.equal(chunks[0].fixes[0][1], vectors)

    # The vectors reach the encoder: capture the token-embedding output.
    seen = []
    handle = model.text_encoder.transformer.embeddings.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        conditioner(model, tokenizer, embeddings=db).encode("a glowstyle cat")
    finally:
        handle.remove()
    position = model.text_encoder.transformer.embeddings.position_embedding.weight[2:5]
    assert torch.allclose(seen[0][0, 2:5], vectors + position, atol=1e-5)
    with_embedding = conditioner(model, tokenizer, embeddings=db).encode("a glowstyle cat")
    without = conditioner(model, tokenizer).encode("a glowstyle cat")
    assert with_embedding.shape == without.shape and not torch.allclose(with_embedding, without)


def test_embedding_that_does_not_fit_moves_to_the_next_chunk(model, tokenizer, tmp_path):
    hidden = model.spec.text.hidden_size
    torch.save({"string_to_param": {"*": torch.randn(5, hidden)}}, tmp_path / "fivevec.pt")
    db = EmbeddingDatabase(tmp_path, tokenizer, hidden)
    chunks = tokenize_prompt(tokenizer, "cat " * 72 + "fivevec", db)
    assert len(chunks) == 2 and chunks[1].fixes[0][0] == 1
    assert CHUNK == 75
