"""core.text.tokenizer against OpenAI's reference CLIP tokenizer.

The reference is ``clip/simple_tokenizer.py`` from the clip-anytorch wheel (listed in
requirements-test-nodeps.txt, installed with ``pip install --no-deps``). Only that one
module file is loaded, so ``clip/__init__.py`` (which imports torchvision) never runs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import random
from pathlib import Path

import pytest

from core.text.tokenizer import ClipTokenizer, load_clip_tokenizer

BOS, EOS = 49406, 49407


def _find_reference_file() -> Path | None:
    try:
        dist = importlib.metadata.distribution("clip-anytorch")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        path = Path(str(dist.locate_file("clip/simple_tokenizer.py")))
        if path.is_file():
            return path
    # find_spec on a top-level package locates it without executing its __init__.py.
    spec = importlib.util.find_spec("clip")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / "simple_tokenizer.py"
            if path.is_file() and (Path(folder) / "bpe_simple_vocab_16e6.txt.gz").is_file():
                return path
    return None


@pytest.fixture(scope="module")
def reference():
    path = _find_reference_file()
    if path is None:
        pytest.fail(
            "OpenAI's reference CLIP tokenizer is not installed: the package clip-anytorch "
            "(clip/simple_tokenizer.py) was not found. Install it with "
            "`pip install --no-deps -r requirements-test-nodeps.txt` "
            "(--no-deps matters: its declared dependency torchvision breaks this environment)."
        )
    spec = importlib.util.spec_from_file_location("_openai_clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SimpleTokenizer()


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return load_clip_tokenizer()


@pytest.fixture(scope="module")
def tok0() -> ClipTokenizer:
    return load_clip_tokenizer(pad_with_eos=False)


def _long_prompt(n_words: int = 300) -> str:
    rng = random.Random(1234)
    words = (
        "masterpiece best quality portrait of a woman in a red dress standing in a field of "
        "sunflowers golden hour cinematic lighting highly detailed 8k octane render trending on "
        "artstation by greg rutkowski (detailed eyes:1.3) [blurry] bokeh 35mm f/1.8"
    ).split()
    return " ".join(rng.choice(words) for _ in range(n_words))


CASES = {
    "plain": "a photo of an astronaut riding a horse on mars",
    "plain_caps": "A Photo Of An ASTRONAUT Riding a Horse",
    "a1111_weights": "(masterpiece:1.2), [bad|good], <lora:x:0.5>",
    "a1111_nested": "((best quality)), (((ultra-detailed))), [[lowres]], {old:new:0.3}, AND, BREAK",
    "a1111_misc": "embedding:EasyNegative, <hypernet:foo_bar-v2:0.75>, (red:1.5) \\(escaped\\)",
    "numbers": "1024x768 3.14 1e-5 50% 2023-12-31 seed=42 #1 $100",
    "contractions": "it's don't I'M they'll we've she'd you're ''s 'dogs",
    "punctuation": "hello!!! what?! ... --- ;; :: ,,, !?!? @user #tag a/b c\\d 'quoted' \"double\"",
    "accents": "café crème brûlée, naïve résumé, Ångström, São Paulo, Straße, İstanbul",
    "greek_sigma": "ΟΔΟΣ ΣΟΦΟΣ Σίσυφος",
    "cyrillic": "Привет мир, кошка на окне",
    "cjk": "猫の写真, 一只可爱的猫, 고양이 사진",
    "arabic_hebrew": "قطة جميلة שלום",
    "emoji": "a cat 🐱 with a thumbs up 👍🏽 and a family 👨‍👩‍👧 🏳️‍🌈",
    "full_width": "ＦＵＬＬ ｗｉｄｔｈ ｔｅｘｔ １２３ （ｃａｔ：１．２）",
    "curly_quotes": "“curly double” and ‘curly single’ it’s – dash — emdash …",
    "html_entities": "rock &amp; roll, &lt;tag&gt;, &amp;amp; &#39;x&#39; &quot;q&quot; &nbsp;end",
    "mojibake": "cafÃ© crÃ¨me, The Mona Lisa doesnÃ¢â‚¬â„¢t have eyebrows, â€œquotedâ€",
    "whitespace": "  lots\t\tof \n\n weird   \r\n whitespace\u00a0nbsp\u2003em\u3000ideographic  ",
    "zero_width_control": "zero\u200bwidth\u200djoiner\x00null\x07bell\u00adsoft\ufeffbom",
    "combining": "e\u0301 a\u0308 n\u0303 combining",
    "special_strings": "<|startoftext|>inside<|endoftext|> text <|ENDOFTEXT|>",
    "repeated": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa lolololololololol zzzzzz !!!!!!!!!!!!!!!!!!!!",
    "long_word": "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "empty": "",
    "only_space": "   \n\t ",
    "long": _long_prompt(),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ids_match_openai_reference(tok, reference, name):
    text = CASES[name]
    assert tok.encode(text) == reference.encode(text)


def test_random_strings_match_reference(tok, reference):
    rng = random.Random(0)
    pool = (
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        "     \t\n.,;:!?'\"()[]{}<>|\\/-_=+*&^%$#@~`"
        "éèàüöäßçñøåÉÀÜİıΣσςλπЖжя猫犬の写真中文한글ＡＢｃ１２！＂“”‘’…–—€£¥°±×÷"
        "\u0301\u0308\u200b\u00a0\u3000🐱🚀👍🏽"
    )
    for _ in range(300):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 60)))
        assert tok.encode(text) == reference.encode(text), repr(text)


def test_long_prompt_not_truncated_by_encode(tok, reference):
    text = CASES["long"]
    ids = tok.encode(text)
    assert len(ids) > 75
    assert ids == reference.encode(text)
    padded = tok.encode_padded(text)
    assert len(padded) == 77
    assert padded[0] == BOS and padded[76] == EOS
    assert padded[1:76] == ids[:75]


def test_constants(tok, tok0):
    for t in (tok, tok0):
        assert (t.bos_id, t.eos_id, t.max_length, t.vocab_size) == (49406, 49407, 77, 49408)
    assert tok.pad_id == 49407
    assert tok0.pad_id == 0
    assert load_clip_tokenizer() is tok
    assert load_clip_tokenizer(True) is tok
    assert load_clip_tokenizer(pad_with_eos=False) is tok0


def test_encode_padded_layout(tok, tok0):
    text = "a photo of a cat"
    ids = tok.encode(text)
    assert ids == [320, 1125, 539, 320, 2368]
    padded = tok.encode_padded(text)
    assert padded == [BOS, *ids, EOS] + [49407] * (77 - len(ids) - 2)
    padded0 = tok0.encode_padded(text)
    assert padded0 == [BOS, *ids, EOS] + [0] * (77 - len(ids) - 2)
    assert tok.encode_padded("") == [BOS, EOS] + [49407] * 75
    assert tok0.encode_padded("") == [BOS, EOS] + [0] * 75
    assert tok.encode("") == [] and tok.encode("  \n ") == []
    # Exactly 75 tokens fit without truncation.
    exact = " ".join(["cat"] * 75)
    assert tok.encode_padded(exact) == [BOS] + [2368] * 75 + [EOS]


def test_clean_matches_openai(tok):
    assert tok.clean("  Rock &amp;amp; Roll\t\nNOW ") == "rock & roll now"
    assert tok.clean("doesnÃ¢â‚¬â„¢t") == "doesn't"
    assert tok.clean("“Ｈｉ”") == '"hi"'
    assert tok.clean("Keep Case", lower=False) == "Keep Case"


def test_vocab_helpers(tok):
    assert tok.token_to_id(",</w>") == 267 == tok.comma_id
    assert tok.token_to_id(",") == 11
    assert tok.token_to_id("!") == 0
    assert tok.token_to_id("cat</w>") == 2368
    assert tok.token_to_id("<|startoftext|>") == BOS
    assert tok.token_to_id("no such token") is None
    assert tok.id_to_token(2368) == "cat</w>"
    assert tok.id_to_token(EOS) == "<|endoftext|>"
    with pytest.raises(IndexError):
        tok.id_to_token(49408)
    assert tok.encode("cat, dog")[1] == tok.comma_id


def test_decode_round_trip(tok, tok0):
    text = "a photo of an astronaut riding a horse on mars"
    assert tok.decode(tok.encode(text)) == text
    assert tok.decode(tok.encode_padded(text)) == text
    assert tok0.decode(tok0.encode_padded(text)) == text
    assert tok.decode(tok.encode("猫の写真 café")) == "猫の写真 café"
    kept = tok.decode(tok.encode_padded("a cat")[:4], skip_special_tokens=False)
    assert kept == "<|startoftext|>a cat <|endoftext|>"


def test_hf_tokenizer_matches(tok, tok0, tmp_path):
    from transformers import CLIPTokenizer

    hf = tok.hf
    assert isinstance(hf, CLIPTokenizer)
    assert hf.pad_token_id == 49407 and hf.bos_token_id == BOS and hf.eos_token_id == EOS
    assert tok0.hf.pad_token_id == 0
    for name in ("plain", "a1111_weights", "numbers", "cjk", "emoji", "long"):
        text = tok.clean(CASES[name])
        assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text), name
        batch = hf(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
        assert batch == tok.encode_padded(text), name
        batch0 = tok0.hf(text, padding="max_length", max_length=77, truncation=True)["input_ids"]
        assert batch0 == tok0.encode_padded(text), name
    # Saved as a diffusers-style tokenizer folder, it loads back with the same ids.
    hf.save_pretrained(tmp_path / "tokenizer")
    loaded = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer")
    text = tok.clean(CASES["a1111_nested"])
    assert loaded(text)["input_ids"] == hf(text)["input_ids"]
    assert loaded.pad_token_id == 49407
