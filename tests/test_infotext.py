"""The A1111 "parameters" text: writing it (create_infotext) and reading it back."""
import json
import random

import pytest

from core.infotext import create_infotext, format_number, param_attribute, params_from_infotext, parse_infotext, quote
from core.params import GenerationParams

# parse_generation_parameters' docstring example in A1111.
A1111_EXAMPLE = """girl with an artist's beret, determined, blue eyes, desert scene, computer monitors, heavy makeup, by Alphonse Mucha and Charlie Bowater, ((eyeshadow)), (coquettish), detailed, intricate
Negative prompt: ugly, fat, obese, chubby, (((deformed))), [blurry], bad anatomy, disfigured, poorly drawn face, mutation, mutated, (extra_limb), (ugly), (poorly drawn hands), messy drawing
Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 965400086, Size: 512x512, Model hash: 45dee52b"""


def test_a1111_docstring_example():
    assert parse_infotext(A1111_EXAMPLE) == {
        "Prompt": A1111_EXAMPLE.split("\n")[0],
        "Negative prompt": A1111_EXAMPLE.split("\n")[1][len("Negative prompt: "):],
        "Steps": "20",
        "Sampler": "Euler a",
        "CFG scale": "7",
        "Seed": "965400086",
        "Size-1": "512",
        "Size-2": "512",
        "Model hash": "45dee52b",
    }


def test_multiline_prompts_quoted_values_and_unknown_fields():
    text = (
        "  first line, (a:1.2)\n  second: line \n\nfourth\n"
        "Negative prompt: bad\nworse\n"
        'Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5.5, Seed: 1, Size: 768x512, '
        'Lora hashes: "a: 0123, b: 4567", Hires resize: 1536x1024, Note: "say \\"hi\\"\\nbye", Version: v1.10.1'
    )
    assert parse_infotext(text) == {
        "Prompt": "first line, (a:1.2)\nsecond: line\n\nfourth",
        "Negative prompt": "bad\nworse",
        "Steps": "30",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "5.5",
        "Seed": "1",
        "Size-1": "768",
        "Size-2": "512",
        "Lora hashes": "a: 0123, b: 4567",
        "Hires resize-1": "1536",
        "Hires resize-2": "1024",
        "Note": 'say "hi"\nbye',
        "Version": "v1.10.1",
    }


def test_last_line_with_few_fields_is_prompt():
    # Fewer than three fields on the last line: A1111 takes it as part of the prompt.
    assert parse_infotext("a cat\nSteps: 20, Seed: 1") == {"Prompt": "a cat\nSteps: 20, Seed: 1", "Negative prompt": ""}
    assert parse_infotext("") == {"Prompt": "", "Negative prompt": ""}


def test_only_settings_line():
    assert parse_infotext("Steps: 5, Sampler: Euler, Seed: 3") == {
        "Prompt": "", "Negative prompt": "", "Steps": "5", "Sampler": "Euler", "Seed": "3",
    }


@pytest.mark.parametrize("value, written", [
    ("plain", "plain"),
    ("with space", "with space"),
    ("a,b", '"a,b"'),
    ("a:b", '"a:b"'),
    ("a\nb", '"a\\nb"'),
    ("é, ü", '"é, ü"'),  # non-ASCII kept, as A1111's ensure_ascii=False
    # Beyond A1111's three characters, so that they read back unchanged:
    ('say "x"', '"say \\"x\\""'),
    (" padded ", '" padded "'),
    ("", '""'),
])
def test_quote(value, written):
    assert quote(value) == written
    if written.startswith('"'):
        assert json.loads(written) == value


def test_format_number():
    assert [format_number(v) for v in (7, 7.0, 7.5, 0.1, 12.345678, 1e-7)] == ["7", "7", "7.5", "0.1", "12.345678", "1e-07"]


def test_create_infotext_current_format():
    params = GenerationParams(prompt="a cat", negative_prompt="blurry", steps=20, cfg_scale=7.0, seed=5)
    assert create_infotext(params, 5, "model", "0123456789") == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 512x512, Model hash: 0123456789, Model: model"
    )
    params = GenerationParams(prompt="a, b", batch_size=2, clip_skip=2, cfg_scale=7.5)
    assert create_infotext(params, 9, None, None, batch_index=1, extra={"Denoising strength": 0.7, "Note": "x: y"}) == (
        # Known fields passed in extra take A1111's place (Denoising strength after Model); others go last.
        "a, b\nSteps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 9, Size: 512x512, Denoising strength: 0.7, "
        'Batch size: 2, Batch pos: 1, Clip skip: 2, Note: "x: y"'
    )


def put(params, key, value):
    """Where params_from_infotext puts a known field: its attribute, or params.extra."""
    attr = param_attribute(key)
    if attr:
        setattr(params, attr, value)
    else:
        params.extra[key] = value


def test_params_from_infotext_mapping():
    text = (
        "a cat\nNegative prompt: dog\n"
        "Steps: 30, Sampler: DDIM, Schedule type: Karras, CFG scale: 6.5, Seed: 42, Size: 640x384, "
        "Model hash: abc123, Model: sd15, Clip skip: 2, Batch size: 4, Batch pos: 3, Variation seed: 7, "
        "Variation seed strength: 0.25, Seed resize from: 512x448, Denoising strength: 0.55, "
        "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Hires resize: 1280x768, "
        "Hires sampler: Euler, Hires schedule type: Exponential, Hires CFG Scale: 5, Hires checkpoint: other, "
        'Hires prompt: "x, y", Hires negative prompt: z, ENSD: 31337, Steps2: nope'
    )
    params, rest = params_from_infotext(text)
    expected = GenerationParams(
        prompt="a cat", negative_prompt="dog", steps=30, cfg_scale=6.5, seed=42, width=640, height=384,
        sampler="DDIM", batch_size=4, clip_skip=2, checkpoint="sd15",
    )
    for key, value in {
        "Schedule type": "Karras", "Model hash": "abc123", "Variation seed": 7, "Variation seed strength": 0.25,
        "Seed resize from-1": 512, "Seed resize from-2": 448, "Denoising strength": 0.55,
        "Hires upscale": 2.0, "Hires steps": 10, "Hires upscaler": "Latent", "Hires resize-1": 1280,
        "Hires resize-2": 768, "Hires sampler": "Euler", "Hires schedule type": "Exponential",
        "Hires CFG Scale": 5.0, "Hires checkpoint": "other", "Hires prompt": "x, y", "Hires negative prompt": "z",
    }.items():
        put(expected, key, value)
    assert params == expected
    assert params.extra["Model hash"] == "abc123"  # no GenerationParams attribute for it
    assert rest == {"Batch pos": "3", "ENSD": "31337", "Steps2": "nope"}


def test_params_from_infotext_bad_values_are_kept_as_text():
    params, rest = params_from_infotext("p\nSteps: many, Seed: 12.0, CFG scale: x, Sampler: Euler")
    assert params.steps == 20 and params.seed == 12 and params.cfg_scale == 7.0
    assert rest == {"Steps": "many", "CFG scale": "x"}


def test_fields_in_params_extra_are_written():
    params = GenerationParams(prompt="p", seed=1)
    params.extra = {"Hires resize-1": 1024, "Hires resize-2": 768, "Denoising strength": 0.4, "Schedule type": "Karras"}
    text = create_infotext(params, 1, "m", "h")
    assert "Sampler: Euler, Schedule type: Karras, CFG scale" in text
    assert "Denoising strength: 0.4" in text and "Hires resize: 1024x768" in text
    back, rest = params_from_infotext(text)
    expected = GenerationParams(prompt="p", seed=1, checkpoint="m")
    for key, value in {**params.extra, "Model hash": "h"}.items():
        put(expected, key, value)
    assert (back, rest) == (expected, {})


# --- round trip -----------------------------------------------------------------------------

PIECES = ["cat", "a dog", ",", ", ", ":", ": ", "(", ")", "[", "]", "(red:1.2)", "[a:b:0.5]", "é", "日本",
          "\"q\"", "\\", "<lora:x:0.5>", "AND", "BREAK", "Steps: 20", "x, y: z", "1", "-", "🙂"]


def _line(rng):
    text = "".join(rng.choice(PIECES) + rng.choice(["", " ", " "]) for _ in range(rng.randint(1, 8))).strip()
    return text if text and not text.startswith("Negative prompt:") else "word"


def _prompt(rng):
    # The format's limits: each line is stripped when read, and a line starting with
    # "Negative prompt:" starts the negative prompt. Empty lines inside are kept.
    if rng.random() < 0.1:
        return ""
    lines = [_line(rng) for _ in range(rng.randint(1, 3))]
    if len(lines) == 3 and rng.random() < 0.3:
        lines[1] = ""
    return "\n".join(lines)


def _random_case(rng):
    params = GenerationParams(
        prompt=_prompt(rng),
        negative_prompt=_prompt(rng) if rng.random() < 0.6 else "",
        steps=rng.randint(1, 150),
        cfg_scale=rng.choice([7.0, 1.5, round(rng.uniform(0, 30), rng.randint(0, 6)), rng.uniform(0, 30)]),
        seed=rng.randrange(2**32),
        width=8 * rng.randint(1, 256),
        height=8 * rng.randint(1, 256),
        sampler=rng.choice(["Euler", "DDIM", "Euler a", "DPM++ 2M SDE", "odd, name: \"x\""]),
        batch_size=rng.choice([1, 1, 2, 8]),
        clip_skip=rng.choice([1, 1, 2, 12]),
        checkpoint=rng.choice(["v1-5", "my model, v2: final", "модель"]),
    )
    known = {
        "Schedule type": lambda: rng.choice(["Karras", "Exponential"]),
        "Variation seed": lambda: rng.randrange(2**32),
        "Variation seed strength": lambda: rng.random(),
        "Denoising strength": lambda: round(rng.random(), 2),
        "Eta": lambda: rng.uniform(0, 1),
        "Emphasis": lambda: rng.choice(["No norm", "None"]),
        "Hires upscale": lambda: rng.choice([1.5, 2.0]),
        "Hires steps": lambda: rng.randint(0, 50),
        "Hires upscaler": lambda: rng.choice(["Latent", "R-ESRGAN 4x+"]),
        "Hires prompt": lambda: _line(rng),
        "Hires CFG Scale": lambda: rng.uniform(1, 10),
    }
    written = {}  # fields with a GenerationParams attribute: the caller writes them (as the engine does)
    chosen = [(key, known[key]()) for key in rng.sample(sorted(known), rng.randint(0, 5))]
    for prefix in ("Seed resize from", "Hires resize"):
        if rng.random() < 0.3:
            chosen += [(f"{prefix}-1", rng.randint(1, 4096)), (f"{prefix}-2", rng.randint(1, 4096))]
    for key, value in chosen:
        put(params, key, value)
        if param_attribute(key):
            base = key[:-2] if key[-2:] in ("-1", "-2") else key
            if key.endswith("-1"):
                written[base] = f"{value}x{dict(chosen)[base + '-2']}"
            elif not key.endswith("-2"):
                written[key] = value
    params.extra["Model hash"] = rng.choice(["0123456789", "abc"])
    unknown = {}
    for _ in range(rng.randint(0, 3)):
        key = rng.choice(["ENSD", "Lora hashes", "Version", "My field", "TI hashes", "RNG"])
        unknown[key] = rng.choice(["31337", "v1.10.1", "a: 1, b: 2", 'say "hi"', "line\nbreak", "x", " spaced ", "é,ü"])
    return params, {**written, **unknown}, unknown


def test_round_trip_random():
    rng = random.Random(20240607)
    for _ in range(500):
        params, extra, unknown = _random_case(rng)
        text = create_infotext(params, params.seed, params.checkpoint, None, batch_index=0, extra=extra)
        back, rest = params_from_infotext(text)
        expected_rest = dict(unknown)
        if params.batch_size > 1:
            expected_rest["Batch pos"] = "0"
        assert (back, rest) == (params, expected_rest), text


def test_round_trip_whitespace_is_normalised_per_line():
    rng = random.Random(7)
    for _ in range(200):
        prompt = "".join(rng.choice(["a", " ", "\n", "\t", ",", "b c", "\r\n"]) for _ in range(rng.randint(0, 12)))
        params = GenerationParams(prompt=prompt)
        back, _ = params_from_infotext(create_infotext(params, 1, None, None))
        # Each line is stripped and leading empty lines go; empty lines after text stay.
        lines = [line.strip() for line in prompt.split("\n")]
        while lines and not lines[0]:
            lines.pop(0)
        assert back.prompt == "\n".join(lines), repr(prompt)
