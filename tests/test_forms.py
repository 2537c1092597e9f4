"""app/forms.py: the generation forms' fields and defaults, form -> GenerationParams, and
infotext -> values (by GenerationParams attribute, then per tab). No page, no engine."""
from __future__ import annotations

import dataclasses
import types

import pytest

from app.forms import (FORM_DEFAULTS, FORM_FIELDS, NO_PARAMETERS, FormError, complete_form, params_from_form,
                       tab_fields, values_from_infotext)
from core.params import GenerationParams
from core.pipelines.masking import FILL_MODES, INPAINT_AREAS, MASK_MODES, RESIZE_MODES


def no_styles(names, prompt, negative):
    return prompt, negative


def test_defaults_are_generation_params_own():
    params = GenerationParams()
    attributes = {f.name for f in dataclasses.fields(GenerationParams)}
    shown_as_labels = {"resize_mode", "inpainting_fill", "inpaint_full_res", "hr_sampler_name", "hr_scheduler",
                       "refiner_checkpoint"}
    for name in attributes & set(FORM_DEFAULTS) - shown_as_labels:
        assert FORM_DEFAULTS[name] == getattr(params, name), name
    assert FORM_DEFAULTS["resize_mode"] == RESIZE_MODES[params.resize_mode]
    assert FORM_DEFAULTS["mask_mode"] == MASK_MODES[params.inpainting_mask_invert]
    assert FORM_DEFAULTS["inpainting_fill"] == FILL_MODES[params.inpainting_fill] == "original"
    assert FORM_DEFAULTS["inpaint_full_res"] == INPAINT_AREAS[params.inpaint_full_res]
    assert (FORM_DEFAULTS["hr_sampler_name"], FORM_DEFAULTS["refiner_checkpoint"]) == ("Use same", "None")


@pytest.mark.parametrize("tab", list(FORM_FIELDS))
def test_an_empty_form_gives_the_default_params(tab):
    assert params_from_form(tab, complete_form(tab, {}), no_styles) == GenerationParams()


def test_a_fractional_whole_number_is_refused_by_name():
    with pytest.raises(FormError, match="steps: must be a whole number, got 2.5"):
        params_from_form("txt2img", complete_form("txt2img", {"steps": 2.5}), no_styles)


def test_values_are_keyed_by_attribute_with_notes_for_what_is_unreadable():
    text = ("a fox\nNegative prompt: blurry\nSteps: many, Sampler: Euler a, CFG scale: 6, Seed: 3, Size: 64x96, "
            "Eta: 0.5, Seed resize from: 32x48, Denoising strength: 0.4, Mask blur: nine, Mask mode: Inpaint not masked, "
            "Masked content: fill, Inpaint area: Only masked, Refiner: other [0123456789], Hires upscale: 2")
    values, notes = values_from_infotext(text)
    assert values == {
        "prompt": "a fox", "negative_prompt": "blurry", "sampler": "Euler a", "cfg_scale": 6.0, "seed": 3,
        "width": 64, "height": 96, "eta": 0.5, "seed_resize_from_w": 32, "seed_resize_from_h": 48,
        "denoising_strength": 0.4, "inpainting_mask_invert": 1, "inpainting_fill": 0, "inpaint_full_res": True,
        "refiner_checkpoint": "other [0123456789]", "hr_scale": 2.0, "enable_hr": True,
    }
    assert notes == {"steps": "Steps: 'many' not understood", "mask_blur": "Mask blur: 'nine' not understood"}
    assert values_from_infotext("  ") == ({}, {"infotext": NO_PARAMETERS})


def test_each_tab_takes_its_own_fields_and_notes():
    values, notes = values_from_infotext("x\nSteps: 5, Seed: 1, Denoising strength: 0.4, Mask blur: nine, "
                                         "Masked content: latent noise, Hires steps: 3")
    fields, kept = tab_fields("txt2img", values, notes)
    assert fields == {"prompt": "x", "negative_prompt": "", "steps": 5, "seed": 1, "hr_denoising_strength": 0.4,
                      "hr_second_pass_steps": 3}
    assert kept == []  # the mask blur is not a txt2img field
    fields, kept = tab_fields("inpaint", values, notes)
    assert (fields["denoising_strength"], fields["inpainting_fill"]) == (0.4, "latent noise")
    assert (fields["mask_mode"], fields["inpaint_full_res"]) == (MASK_MODES[0], INPAINT_AREAS[0])
    assert "hr_second_pass_steps" not in fields and kept == ["Mask blur: 'nine' not understood"]


def test_lora_cards_list_every_lora_suffix(tmp_path):
    from app.page.extra_networks import ExtraNetworks

    for name in ("a.safetensors", "b.pt", "c.ckpt", "d.bin", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    networks = ExtraNetworks(types.SimpleNamespace(lora_dir=tmp_path), settings=None)
    assert [card.name for card in networks.cards("lora")] == ["a", "b", "c", "d"]
