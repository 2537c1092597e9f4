"""The page's callbacks (app/page/: its area objects, through the layout), without a browser.

Most tests use a stand-in engine; the last group drives the real engine on the tiny
checkpoint and reads the saved files back with sd-parsers.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
import types
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

from app.comfy import infotext_from_comfy
from app.imagefiles import decode_user_comment, read_metadata, save_image, user_comment
from app.preview import latent_preview
from app.settings import Settings
from app.forms import FORM_FIELDS, INPAINT_SOURCES
from app.page.messages import progress_html
from app.page.studio import StudioUI
from app.page.uploads import editor_image_and_mask
from app.styles import StyleDatabase, merge

INFOTEXT = ("a castle on a hill, (sunset:1.2)\nNegative prompt: blurry, lowres\n"
            "Steps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, "
            "Model hash: abcdef1234, Model: sd15, Clip skip: 2, Denoising strength: 0.45, Hires upscale: 1.5, "
            "Hires steps: 5, Hires upscaler: Latent (bicubic)")


# The engine's own error type (a tiny module, no torch): the page tells it apart by class.
from core.errors import EngineError  # noqa: E402
from fake_engine import FakeEngine, engine_class  # noqa: E402
from launch_args import launch_args  # noqa: E402


@pytest.fixture
def studio(tmp_path):
    engine = FakeEngine(tmp_path)
    settings = Settings(tmp_path / "config.json")
    settings.update({"preview_every": 1})
    styles = StyleDatabase(tmp_path / "styles.csv")
    return StudioUI(engine, settings=settings, styles=styles)


def run_stream(ui, tab, form):
    return list(ui.generation.stream(tab, form))


def picture(width=64, height=64):
    image = Image.new("RGB", (width, height), (30, 60, 200))
    ImageDraw.Draw(image).ellipse((10, 12, 40, 44), fill=(220, 40, 30))
    return image


# ------------------------------------------------------------------ the page


def test_page_has_every_tab_and_control(tmp_path):
    from app.page.build import build_ui, page_assets

    engine = FakeEngine(tmp_path)
    demo = build_ui(engine, settings=Settings(tmp_path / "c.json"), styles=StyleDatabase(tmp_path / "s.csv"))
    assert isinstance(demo, gr.Blocks)
    blocks = list(demo.blocks.values())
    # each generation tab's extra networks have tabs of their own (Checkpoints, Textual Inversion, LoRA)
    network_tabs = {f"{tab}_{kind}_tab" for tab in ("txt2img", "img2img", "inpaint")
                    for kind in ("checkpoints", "textual_inversion", "lora")}
    assert network_tabs <= {b.elem_id for b in blocks if isinstance(b, gr.Tab)}
    tabs = {b.label for b in blocks if isinstance(b, gr.Tab) and b.elem_id not in network_tabs}
    assert tabs == {"txt2img", "img2img", "Inpaint", "Super-resolution", "Gallery", "PNG Info", "Styles", "Settings"}
    ids = {getattr(b, "elem_id", None) for b in blocks}
    for tab in ("txt2img", "img2img", "inpaint"):
        for part in ("prompt", "neg_prompt", "generate", "interrupt", "skip", "sampler", "scheduler", "steps",
                     "cfg_scale", "width", "height", "swap_size", "seed", "random_seed", "reuse_seed", "batch_count",
                     "batch_size", "clip_skip", "styles", "gallery", "info", "progress", "send_to_img2img",
                     "send_to_inpaint", "send_to_extras"):
            assert f"{tab}_{part}" in ids, f"{tab}_{part}"
    assert {f"{tab}_{part}" for tab in ("txt2img", "img2img", "inpaint")
            for part in ("token_counter", "negative_token_counter", "paste", "extra_networks", "extranet_search")} <= ids
    assert {"txt2img_enable_hr", "img2img_image", "img2img_resize_mode", "inpaint_editor", "inpaint_mask_blur",
            "inpaint_fill", "inpaint_area", "inpaint_padding", "inpaint_mask_mode", "outpaint_directions",
            "outpaint_pixels", "extras_upscaler", "extras_generate", "gallery_images", "gallery_delete",
            "pnginfo_image", "pnginfo_send_to_txt2img", "settings_apply", "styles_save"} <= ids
    dropdowns = {b.elem_id: b for b in blocks if isinstance(b, gr.Dropdown)}
    assert [c[0] for c in dropdowns["checkpoint"].choices] == ["sd15.safetensors", "sub/other.ckpt"]
    assert [c[0] for c in dropdowns["sd_vae"].choices] == ["Automatic", "None"]  # no files in models/VAE
    from core.sampling.samplers import SAMPLERS

    assert [c[0] for c in dropdowns["txt2img_sampler"].choices] == list(SAMPLERS)
    assert [c[0] for c in dropdowns["txt2img_scheduler"].choices][:3] == ["Automatic", "Uniform", "Karras"]
    hires = [c[0] for c in dropdowns["txt2img_hr_upscaler"].choices]
    assert hires[0] == "Latent" and "Lanczos" in hires
    assert "Lanczos" in [c[0] for c in dropdowns["extras_upscaler"].choices]
    editor = next(b for b in blocks if getattr(b, "elem_id", None) == "inpaint_editor")
    assert isinstance(editor, gr.ImageEditor) and editor.brush is not None
    jobs = [fn for fn in demo.fns.values() if fn.api_name in ("txt2img", "img2img", "inpaint", "upscale")]
    assert len(jobs) == 4 and {(fn.concurrency_id, fn.concurrency_limit) for fn in jobs} == {("studio-job", 1)}
    stops = [fn for fn in demo.fns.values() if fn.api_name and fn.api_name.endswith(("_interrupt", "_skip"))]
    assert len(stops) == 6 and all(fn.concurrency_limit is None for fn in stops)  # never wait behind a job
    assets = page_assets()
    assert "studioEditWeight" in assets["load_js"] and "_generate" in assets["load_js"]
    assert any(getattr(fn, "js", None) == assets["load_js"] for fn in demo.fns.values())
    assert demo.studio.engine is engine


def test_form_fields_match_the_page(tmp_path):
    from app.page.build import build_ui

    demo = build_ui(FakeEngine(tmp_path), settings=Settings(tmp_path / "c.json"),
                    styles=StyleDatabase(tmp_path / "s.csv"))
    for name, tab in demo.studio_tabs.items():
        assert list(tab.fields) and set(FORM_FIELDS[name]) <= set(tab.fields)
        assert len(tab.inputs()) == len(FORM_FIELDS[name])


# ------------------------------------------------------------------ parameters


def test_txt2img_form_becomes_generation_params(studio):
    from core.params import GenerationParams

    form = studio.generation.form("txt2img", dict(
        prompt="a cat", negative_prompt="blurry", checkpoint="sd15.safetensors", sampler="DDIM", scheduler="Karras",
        steps=12.0, cfg_scale=6.5, seed=42.0, width=64.0, height=96.0, batch_count=2.0, batch_size=1.0,
        clip_skip=2.0, subseed=5, subseed_strength=0.3, enable_hr=True, hr_upscaler="Lanczos", hr_scale=1.5,
        hr_second_pass_steps=3, hr_denoising_strength=0.4, hr_sampler_name="Euler a"))
    params = studio.generation.make_params("txt2img", form)
    assert isinstance(params, GenerationParams)
    assert (params.prompt, params.negative_prompt, params.steps, params.cfg_scale, params.seed) == (
        "a cat", "blurry", 12, 6.5, 42)
    assert (params.width, params.height, params.batch_count, params.batch_size, params.clip_skip) == (64, 96, 2, 1, 2)
    assert (params.sampler, params.scheduler, params.checkpoint) == ("DDIM", "Karras", "sd15.safetensors")
    assert (params.subseed, params.subseed_strength) == (5, 0.3)
    assert params.enable_hr and params.hr_upscaler == "Lanczos" and params.hr_scale == 1.5
    assert (params.hr_second_pass_steps, params.denoising_strength, params.hr_sampler_name, params.hr_scheduler) == (
        3, 0.4, "Euler a", "")
    params.validate()


def test_empty_seed_and_checkpoint_mean_defaults(studio):
    params = studio.generation.make_params("txt2img", studio.generation.form("txt2img", dict(seed=None, checkpoint="")))
    assert params.seed == -1 and params.checkpoint is None and not params.enable_hr


def test_inpaint_options_map_to_a1111_params(studio):
    form = studio.generation.form("inpaint", dict(mask_blur=8, mask_mode="Inpaint not masked", inpainting_fill="latent noise",
                                       inpaint_full_res="Only masked", inpaint_full_res_padding=48,
                                       resize_mode="Crop and resize", denoising_strength=0.6))
    params = studio.generation.make_params("inpaint", form)
    assert (params.mask_blur, params.inpainting_mask_invert, params.inpainting_fill, params.inpaint_full_res,
            params.inpaint_full_res_padding, params.resize_mode, params.denoising_strength) == (8, 1, 2, True, 48, 1, 0.6)
    params.validate()


def test_styles_are_applied_to_the_prompts(studio):
    studio.styles.save_style("cinema", "{prompt}, cinematic lighting", "cartoon")
    studio.styles.save_style("plain", "high detail", "")
    params = studio.generation.make_params("txt2img", studio.generation.form("txt2img", dict(
        prompt="a fox", negative_prompt="blurry", styles=["cinema", "plain"])))
    assert params.prompt == "a fox, cinematic lighting, high detail"
    assert params.negative_prompt == "blurry, cartoon"
    with pytest.raises(gr.Error, match="no style named 'gone'"):
        studio.generation.make_params("txt2img", studio.generation.form("txt2img", dict(styles=["gone"])))


# ------------------------------------------------------------------ jobs


def test_stream_shows_progress_preview_then_results(studio):
    updates = run_stream(studio, "txt2img", dict(prompt="a cat", steps=3, width=64, height=64, seed=5))
    progress_texts = [u[3] for u in updates if isinstance(u[3], str) and "Step" in u[3]]
    assert progress_texts and "ETA" in progress_texts[-1]
    previews = [u[0] for u in updates[:-1] if isinstance(u[0], list)]
    assert previews and isinstance(previews[0][0][0], Image.Image) and previews[0][0][1] == "preview"
    gallery_value, info, log, progress, items = updates[-1]
    assert progress == ""
    (item,) = items
    path = Path(item["path"])
    today = dt.date.today().isoformat()
    assert path == studio.engine.output_dir / "txt2img-images" / today / "00000-5.png"  # the engine saved it
    assert gallery_value == [(str(path), None)] and info == item["infotext"] and item["seed"] == 5
    assert "1 image in" in log and str(path.parent) in log
    assert studio.engine.calls[0][4] is True  # save=True: the engine's own layout


def test_jpeg_setting_saves_with_exif_user_comment(studio):
    studio.settings.update({"image_format": "jpg", "filename_pattern": "[seed]-[prompt_words]"})
    *_, (gallery_value, info, log, progress, items) = run_stream(studio, "txt2img", dict(prompt="a cat, (fur:1.2)", seed=9,
                                                                                     steps=2))
    path = Path(items[0]["path"])
    assert path.name == "00000-9-a cat fur.jpg" and path.parent.parent.name == "txt2img-images"
    assert studio.engine.calls[0][4] is False  # the page saved it
    meta = read_metadata(path)
    assert meta["parameters"] == info and meta["source"] == "EXIF UserComment"
    from sd_parsers import ParserManager

    parsed = ParserManager().parse(str(path))
    assert parsed is not None and parsed.samplers[0].parameters["seed"] == "9"
    with Image.open(path) as image:
        raw = image.getexif().get_ifd(0x8769)[0x9286]
    assert raw.startswith(b"UNICODE\0") and decode_user_comment(raw) == info


def test_webp_and_custom_folders(studio, tmp_path):
    studio.settings.update({"image_format": "webp", "outdir": str(tmp_path / "outputs" / "elsewhere"),
                            "outdir_txt2img": "t2i", "directory_pattern": "[date]/[sampler]"})
    *_, (_, info, _, _, items) = run_stream(studio, "txt2img", dict(prompt="x", seed=3, steps=1))
    path = Path(items[0]["path"])
    assert path.parent == tmp_path / "outputs" / "elsewhere" / "t2i" / dt.date.today().isoformat() / "Euler"
    assert path.suffix == ".webp" and read_metadata(path)["parameters"] == info


@pytest.mark.parametrize("error, message", [
    (EngineError("checkpoint: 'x' not found in /models"), "checkpoint: 'x' not found in /models"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), "Out of memory: try a smaller size"),
    (MemoryError(), "Out of memory"),
    (RuntimeError("boom"), "Generation failed: RuntimeError: boom"),
])
def test_errors_become_messages_and_the_page_stays_usable(tmp_path, error, message):
    engine = FakeEngine(tmp_path, fail=error)
    ui = StudioUI(engine, settings=Settings(tmp_path / "c.json"), styles=StyleDatabase(tmp_path / "s.csv"))
    updates = []
    with pytest.raises(gr.Error) as info:
        for update in ui.generation.stream("txt2img", dict(prompt="x", steps=1)):
            updates.append(update)
    assert info.value.message.startswith(message)
    import html

    assert html.escape(message) in updates[-1][2] and "studio-error" in updates[-1][2] and updates[-1][3] == ""
    engine.fail = None
    *_, last = run_stream(ui, "txt2img", dict(prompt="x", steps=1))
    assert len(last[4]) == 1


def test_bad_parameters_are_named(studio):
    with pytest.raises(gr.Error, match="steps: must be a whole number"):
        run_stream(studio, "txt2img", dict(steps=2.5))
    with pytest.raises(gr.Error, match="img2img: upload an input image first"):
        run_stream(studio, "img2img", dict(prompt="x"))


def test_interrupt_stops_the_job_and_says_so(tmp_path):
    engine = FakeEngine(tmp_path, steps_delay=0.02)
    ui = StudioUI(engine, settings=Settings(tmp_path / "c.json"), styles=StyleDatabase(tmp_path / "s.csv"))
    threading.Timer(0.3, ui.generation.interrupt).start()
    *_, (gallery_value, info, log, progress, items) = run_stream(ui, "txt2img",
                                                                dict(prompt="x", steps=20, batch_count=50))
    assert engine.interrupts == 1 and len(items) < 50 and "Interrupted" in log


def test_skip_and_interrupt_reach_the_engine(studio):
    studio.generation.skip()
    assert studio.engine.flags.skipped
    studio.generation.interrupt()
    assert studio.engine.interrupts == 1


def test_closing_the_stream_interrupts_the_engine(tmp_path):
    engine = FakeEngine(tmp_path, steps_delay=0.05)
    ui = StudioUI(engine, settings=Settings(tmp_path / "c.json"), styles=StyleDatabase(tmp_path / "s.csv"))
    stream = ui.generation.stream("txt2img", dict(prompt="x", steps=50))
    next(stream)
    next(stream)  # a progress update: the job is running
    stream.close()
    assert engine.interrupts == 1


def test_reuse_seed_and_selection(studio):
    *_, (_, _, _, _, items) = run_stream(studio, "txt2img", dict(prompt="x", seed=100, batch_size=2, steps=1))
    assert [i["seed"] for i in items] == [100, 101]
    assert studio.generation.reuse_seed(items, 1) == 101 and studio.generation.reuse_seed(items, None) == 100
    assert studio.generation.select_result(items, 1) == items[1]["infotext"]
    assert isinstance(studio.generation.reuse_seed([], 0), type(gr.skip()))


def test_progress_html_reads_well():
    p = types.SimpleNamespace(step=3, steps=12, batch=0, batches=2, fraction=0.125, eta_seconds=75)
    text = progress_html(p)
    assert "Step 3/12 · batch 1/2 · 12% · ETA 01:15" in text and 'style="width:12.5%"' in text
    assert progress_html(None) == ""


# ------------------------------------------------------------------ img2img and inpaint inputs


def test_img2img_passes_the_picture(studio):
    *_, last = run_stream(studio, "img2img", dict(prompt="x", init_image=picture(), denoising_strength=0.5, steps=2))
    kind, params, image, mask, _ = studio.engine.calls[0]
    assert kind == "img2img" and image.size == (64, 64) and mask is None and params.denoising_strength == 0.5
    assert "a note from the engine" in last[2]


def editor_value(painted: bool = True):
    background = picture(80, 64).convert("RGBA")
    layer = Image.new("RGBA", background.size, (0, 0, 0, 0))
    if painted:
        ImageDraw.Draw(layer).rectangle((10, 10, 29, 19), fill=(255, 255, 255, 255))
    return {"background": background, "layers": [layer], "composite": background}


def test_painted_layer_becomes_a_white_mask():
    image, mask = editor_image_and_mask(editor_value())
    assert image.size == (80, 64) and mask.mode == "L"
    assert mask.getbbox() == (10, 10, 30, 20) and mask.getpixel((15, 15)) == 255 and mask.getpixel((50, 50)) == 0
    assert editor_image_and_mask(editor_value(painted=False))[1] is None
    with pytest.raises(gr.Error, match="upload an image"):
        editor_image_and_mask({"background": None, "layers": [], "composite": None})


def test_inpaint_sends_image_and_mask(studio):
    run_stream(studio, "inpaint", dict(prompt="x", editor=editor_value(), steps=1))
    _, params, image, mask, _ = studio.engine.calls[0]
    assert image.size == mask.size == (80, 64) and mask.getbbox() == (10, 10, 30, 20)
    with pytest.raises(gr.Error, match="paint over the part"):
        run_stream(studio, "inpaint", dict(prompt="x", editor=editor_value(painted=False), steps=1))


def test_inpaint_with_uploaded_mask(studio, tmp_path):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    mask_path = tmp_path / "mask.png"
    mask.save(mask_path)
    run_stream(studio, "inpaint", dict(inpaint_source=INPAINT_SOURCES[1], inpaint_image=picture(),
                                       inpaint_mask=str(mask_path), steps=1))
    _, _, image, sent_mask, _ = studio.engine.calls[0]
    assert sent_mask.getbbox() == (0, 0, 32, 64)
    with pytest.raises(gr.Error, match="upload a mask"):
        run_stream(studio, "inpaint", dict(inpaint_source=INPAINT_SOURCES[1], inpaint_image=picture(), steps=1))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a picture")
    with pytest.raises(gr.Error, match="mask: not a readable image"):
        run_stream(studio, "inpaint", dict(inpaint_source=INPAINT_SOURCES[1], inpaint_image=picture(),
                                           inpaint_mask=str(bad), steps=1))


def test_outpainting_grows_the_canvas_and_the_size(studio):
    *_, last = run_stream(studio, "inpaint", dict(prompt="x", editor=editor_value(painted=False),
                                                  outpaint_directions=["left", "down"], outpaint_pixels=30, steps=1))
    _, params, image, mask, _ = studio.engine.calls[0]
    assert image.size == (80 + 32, 64 + 32) and mask.size == image.size
    assert (params.width, params.height) == (112, 96)
    assert mask.getpixel((0, 0)) == 255 and mask.getpixel((60, 20)) == 0
    assert "outpainting left, down by 30px" in last[2]


# ------------------------------------------------------------------ send-to and infotext


def test_infotext_fills_every_field_it_knows(studio):
    studio.engine.checkpoints = ["sd15.safetensors", "other.ckpt"]
    fields, notes = studio.generation.fields_from_infotext(INFOTEXT, "txt2img")
    assert fields == {
        "prompt": "a castle on a hill, (sunset:1.2)", "negative_prompt": "blurry, lowres", "steps": 12,
        "sampler": "DPM++ 2M", "scheduler": "Karras", "cfg_scale": 6.5, "seed": 1234, "width": 512, "height": 768,
        "checkpoint": "sd15.safetensors", "clip_skip": 2, "hr_denoising_strength": 0.45, "hr_scale": 1.5,
        "hr_second_pass_steps": 5, "hr_upscaler": "Latent (bicubic)", "enable_hr": True,
    }
    assert notes == []
    fields, _ = studio.generation.fields_from_infotext(INFOTEXT, "img2img")
    assert fields["denoising_strength"] == 0.45 and "enable_hr" not in fields and "hr_scale" not in fields


def test_infotext_old_sampler_names_unknown_model_and_inpaint_fields(studio):
    text = ("x\nSteps: 5, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1, Size: 64x64, Model: nowhere, "
            "Mask blur: 9, Masked content: latent nothing, Inpaint area: Only masked, Masked area padding: 40")
    fields, notes = studio.generation.fields_from_infotext(text, "inpaint")
    assert (fields["sampler"], fields["scheduler"]) == ("DPM++ 2M", "Karras")
    assert "checkpoint" not in fields and any("nowhere" in n for n in notes)
    assert (fields["mask_blur"], fields["inpainting_fill"], fields["inpaint_full_res"],
            fields["inpaint_full_res_padding"]) == (9, "latent nothing", "Only masked", 40)
    values, _ = studio.generation.field_updates("txt2img", "just a prompt", ["prompt", "steps"])
    assert values[0] == "just a prompt" and isinstance(values[1], type(gr.skip()))


# ------------------------------------------------------------------ PNG info


def png_with(tmp_path, name, **chunks):
    info = PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    path = tmp_path / name
    picture().save(path, pnginfo=info)
    return path


def test_png_info_reads_our_and_a1111_files(studio, tmp_path):
    path = png_with(tmp_path, "a.png", parameters=INFOTEXT, extras="something else")
    text, details, items = studio.gallery.png_info(str(path))
    assert text == INFOTEXT and "something else" in details and "parameters" in details
    studio.engine.checkpoints = ["sd15.safetensors"]
    fields, _ = studio.generation.fields_from_infotext(text, "txt2img")
    assert fields["seed"] == 1234 and fields["checkpoint"] == "sd15.safetensors"


COMFY_PROMPT = {
    "3": {"class_type": "KSampler", "inputs": {"seed": 156680208700286, "steps": 20, "cfg": 8.0,
                                               "sampler_name": "dpmpp_2m", "scheduler": "karras", "denoise": 1.0,
                                               "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
                                               "latent_image": ["5", 0]}},
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15/v1-5-pruned-emaonly.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 640, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "beautiful scenery, purple galaxy bottle", "clip": ["10", 0]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "text, watermark", "clip": ["10", 0]}},
    "10": {"class_type": "CLIPSetLastLayer", "inputs": {"stop_at_clip_layer": -2, "clip": ["4", 1]}},
}
COMFY_WORKFLOW = {
    "nodes": [
        {"id": 3, "type": "KSampler", "inputs": [{"name": "model", "link": 1}, {"name": "positive", "link": 4},
                                                 {"name": "negative", "link": 6}, {"name": "latent_image", "link": 2}],
         "widgets_values": [42, "fixed", 25, 6.5, "euler_ancestral", "normal", 1]},
        {"id": 4, "type": "CheckpointLoaderSimple", "inputs": [], "widgets_values": ["dreamy.ckpt"]},
        {"id": 5, "type": "EmptyLatentImage", "inputs": [], "widgets_values": [768, 512, 1]},
        {"id": 6, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "link": 3}], "widgets_values": ["a lighthouse"]},
        {"id": 7, "type": "CLIPTextEncode", "inputs": [{"name": "clip", "link": 5}], "widgets_values": ["fog"]},
    ],
    "links": [[1, 4, 0, 3, 0, "MODEL"], [2, 5, 0, 3, 3, "LATENT"], [3, 4, 1, 6, 0, "CLIP"],
              [4, 6, 0, 3, 1, "CONDITIONING"], [5, 4, 1, 7, 0, "CLIP"], [6, 7, 0, 3, 2, "CONDITIONING"]],
}


def test_png_info_reads_comfyui_prompt_and_workflow(studio, tmp_path):
    path = png_with(tmp_path, "c.png", prompt=json.dumps(COMFY_PROMPT), workflow=json.dumps(COMFY_WORKFLOW))
    text, details, items = studio.gallery.png_info(str(path))
    assert text == ("beautiful scenery, purple galaxy bottle\nNegative prompt: text, watermark\n"
                    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 8, Seed: 156680208700286, "
                    "Size: 512x640, Model: v1-5-pruned-emaonly, Clip skip: 2")
    assert "ComfyUI prompt and workflow" in details and isinstance(items["prompt"], dict)
    only_workflow = infotext_from_comfy(None, json.dumps(COMFY_WORKFLOW))
    assert only_workflow == ("a lighthouse\nNegative prompt: fog\nSteps: 25, Sampler: Euler a, CFG scale: 6.5, "
                             "Seed: 42, Size: 768x512, Model: dreamy")
    fields, notes = studio.generation.fields_from_infotext(text, "txt2img")
    assert (fields["sampler"], fields["scheduler"], fields["seed"], fields["clip_skip"]) == (
        "DPM++ 2M", "Karras", 156680208700286, 2)


def test_png_info_without_parameters_and_unreadable(studio, tmp_path):
    text, details, _ = studio.gallery.png_info(str(png_with(tmp_path, "plain.png")))
    assert text == "" and "No generation parameters" in details
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    with pytest.raises(gr.Error, match="not a readable image"):
        studio.gallery.png_info(str(bad))
    assert studio.gallery.png_info(None) == ("", "", {})


def test_user_comment_round_trip_both_byte_orders():
    assert decode_user_comment(user_comment("héllo\nSteps: 1")) == "héllo\nSteps: 1"
    assert decode_user_comment(b"UNICODE\0" + "abc, d: 1".encode("utf-16-le")) == "abc, d: 1"
    assert decode_user_comment(b"ASCII\0\0\0plain") == "plain"


# ------------------------------------------------------------------ settings and styles


def test_settings_are_saved_atomically_and_checked(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"preview_every": 3, "from_a_later_version": True, "default_steps": "many"}))
    settings = Settings(path)
    assert settings["preview_every"] == 3 and settings["default_steps"] == 20
    assert any("default_steps" in w for w in settings.load_warnings)
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: replaced.append((a, b)) or real_replace(a, b))
    assert settings.update({"image_format": "JPEG", "default_width": 768}) == ["image_format", "default_width"]
    assert len(replaced) == 1 and Path(replaced[0][1]) == path and Path(replaced[0][0]).parent == tmp_path
    stored = json.loads(path.read_text())
    assert stored["image_format"] == "jpg" and stored["default_width"] == 768 and stored["from_a_later_version"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temporary file left
    with pytest.raises(ValueError, match="Default width: must be a multiple of 8"):
        settings.update({"default_width": 500, "preview_every": 9})
    assert settings["preview_every"] == 3  # nothing stored when one value is bad
    assert Settings(path)["default_width"] == 768


def test_apply_settings_from_the_page(studio):
    message = studio.styles_settings.apply_settings(["default_steps", "image_format"], [30, "webp"])
    assert "Saved 2 setting(s)" in message and "reloaded" in message
    assert studio.styles_settings.page_defaults()["steps"] == 30 and studio.settings["image_format"] == "webp"
    with pytest.raises(gr.Error, match="Settings not saved: Default sampling steps"):
        studio.styles_settings.apply_settings(["default_steps"], [0])


def test_styles_csv_is_a1111_compatible(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text('name,prompt,negative_prompt\n"Photo","{prompt}, photo, 35mm","drawing, anime"\n'
                    'Empty,,\nOld style,"oil painting"\n', encoding="utf-8")
    db = StyleDatabase(path)
    assert db.names() == ["Photo", "Empty", "Old style"]
    assert db.apply(["Photo", "Old style"], "a dog", "") == ("a dog, photo, 35mm, oil painting", "drawing, anime")
    db.save_style("New, with comma", "x, \"quoted\"", "")
    db.delete_style("Empty")
    again = StyleDatabase(path)
    assert again.names() == ["Photo", "Old style", "New, with comma"]
    assert again.get("New, with comma").prompt == 'x, "quoted"'
    assert path.read_text().splitlines()[0] == "name,prompt,negative_prompt"
    assert merge("", "p") == "p" and merge("s", "") == "s"


def test_save_style_from_the_current_prompt(studio):
    assert "saved" in studio.styles_settings.save_style("mine", "a {prompt} b", "neg")
    assert studio.styles_settings.apply_styles_to_prompt(["mine"], "cat", "") == ("a cat b", "neg", [])
    with pytest.raises(gr.Error, match="give the style a name"):
        studio.styles_settings.save_style(" ", "x", "")


# ------------------------------------------------------------------ gallery


def test_gallery_lists_deletes_to_trash_and_restores(studio):
    root = studio.outputs.output_root()
    old = save_image(picture(), root / "txt2img-images" / "2020-01-02", name="1", infotext="old\nSteps: 1, Seed: 1, Size: 1x1")
    os.utime(old, (1577923200, 1577923200))
    new = save_image(picture(), root / "txt2img-images" / dt.date.today().isoformat(), name="2", infotext="new\nSteps: 2, Seed: 2, Size: 64x64")
    extra = save_image(picture(), root / "extras-images" / dt.date.today().isoformat(), name="")
    items, dates, paths, note = studio.gallery.images("All", "All")
    assert paths == [str(extra), str(new), str(old)] or paths == [str(new), str(extra), str(old)]
    assert dates == ["All", dt.date.today().isoformat(), "2020-01-02"]
    assert studio.gallery.images("txt2img", "2020-01-02")[2] == [str(old)]
    info, link, picked = studio.gallery.select(paths, paths.index(str(new)))
    assert info.startswith("new") and picked == str(new) and "/gradio_api/file=" in link
    message = studio.gallery.delete(str(new))
    trashed = root / "trash" / new.relative_to(root)
    assert "trash" in message and trashed.is_file() and not new.exists()
    assert str(new) not in studio.gallery.images("All", "All")[2]
    assert studio.gallery.trash()[1] == [str(trashed)]
    save_image(picture(), new.parent, name="2")  # the same name is taken again meanwhile
    assert new.exists()
    restored = Path(studio.gallery.restore(str(trashed)).split(": ", 1)[1])
    assert restored == new.with_name(new.stem + "-restored-1.png") and restored.is_file()
    with pytest.raises(gr.Error, match="not an image in the output folders"):
        outside = studio.outputs.output_root().parent / "outside.png"
        picture().save(outside)
        studio.gallery.delete(str(outside))
    assert outside.exists()


def test_gallery_delete_picks_the_next_picture_and_a_refusal_is_a_warning_not_an_error(studio):
    folder = studio.outputs.output_root() / "txt2img-images" / dt.date.today().isoformat()
    made = [save_image(picture(), folder, name=str(n), infotext=f"p{n}\nSteps: 1, Seed: {n}, Size: 64x64")
            for n in range(3)]
    for age, path in enumerate(made):  # newest first: 2, 1, 0
        os.utime(path, (1_700_000_000 + age, 1_700_000_000 + age))
    listed = studio.gallery.images("All", "All")[2]
    assert listed == [str(made[2]), str(made[1]), str(made[0])]
    message, pictures, _, now_listed, _, info, link, picked, trash, _ = studio.gallery.delete_and_list(
        listed[1], "All", "All", listed)
    assert "trash" in message and now_listed == [str(made[2]), str(made[0])]
    # the picture that took the deleted one's place is picked, in the gallery and for the next Delete
    assert pictures.selected_index == 1 and picked == str(made[0]) and info.startswith("p0") and str(made[0]) in link
    last = studio.gallery.delete_and_list(picked, "All", "All", now_listed)
    assert last[3] == [str(made[2])] and last[7] == str(made[2])  # the last one gone: the one before it
    refused = studio.gallery.delete_and_list("", "All", "All", last[3])
    assert refused[0] == "Gallery: pick an image first"
    assert all(update == gr.skip() for update in refused[1:])  # the page is left as it is
    assert Path(last[3][0]).exists()


# ------------------------------------------------------------------ previews and upscaling


def test_latent_preview_is_a_small_rgb_picture():
    latent = np.zeros((2, 4, 8, 6), np.float32)
    latent[0, 0] = 2.0
    image = latent_preview(latent)
    assert image.size == (48, 64) and image.mode == "RGB"
    assert image.getpixel((10, 10))[0] > 127
    assert latent_preview(np.zeros((1, 9, 8, 8))) is None and latent_preview(None) is None
    import torch

    assert latent_preview(torch.zeros(1, 4, 4, 4)).size == (32, 32)


def test_upscale_single_image_and_folder(studio, tmp_path):
    source = png_with(tmp_path, "src.png", parameters="a dog\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 8, Size: 64x64")
    gallery_value, info, log, items = studio.superres.upscale("Single image", str(source), "", "", "Lanczos", "Scale by",
                                                     2, 0, 0)
    path = Path(items[0]["path"])
    assert path.parent.parent.name == "extras-images"
    with Image.open(path) as image:
        assert image.size == (128, 128)
    assert info.startswith("a dog\nSteps: 3") and "Postprocess upscale by: 2, Postprocess upscaler: Lanczos" in info
    assert read_metadata(path)["parameters"] == info
    folder = tmp_path / "outputs" / "batch"  # batches use the allowed folders (the outputs by default)
    folder.mkdir(parents=True)
    for i in range(2):
        picture(32, 16).save(folder / f"p{i}.png")
    (folder / "notes.txt").write_text("skip me")
    (folder / "broken.png").write_bytes(b"nope")
    out = tmp_path / "outputs" / "batch-out"
    gallery_value, info, log, items = studio.superres.upscale("Batch from folder", None, str(folder), str(out), "Lanczos",
                                                     "Scale to", 0, 96, 0)
    assert sorted(Path(i["path"]).name for i in items) == ["00000-p0.png", "00001-p1.png"]
    assert "broken.png" in log and "2 of 3 image(s)" in log
    with Image.open(items[0]["path"]) as image:
        assert image.size == (96, 48)
    with pytest.raises(gr.Error, match="unknown upscaler"):
        studio.superres.upscale("Single image", str(source), "", "", "NoSuchModel", "Scale by", 2, 0, 0)
    with pytest.raises(gr.Error, match="upload an image first"):
        studio.superres.upscale("Single image", None, "", "", "Lanczos", "Scale by", 2, 0, 0)


# ------------------------------------------------------------------ the real engine on the tiny checkpoint


@pytest.fixture(scope="module")
def real_studio(tiny_checkpoints, tmp_path_factory):
    from tiny_models import engine_on_tiny_checkpoint

    root = tmp_path_factory.mktemp("webui-real")
    engine = engine_on_tiny_checkpoint(root, tiny_checkpoints["safetensors"])
    settings = Settings(root / "config.json")
    settings.update({"preview_every": 1})
    return StudioUI(engine, settings=settings, styles=StyleDatabase(root / "styles.csv"))


def test_real_txt2img_saves_a_parameters_chunk_that_sd_parsers_reads(real_studio):
    from sd_parsers import ParserManager

    updates = run_stream(real_studio, "txt2img", dict(
        prompt="a lighthouse at dusk", negative_prompt="blurry, lowres", checkpoint="tiny.safetensors",
        sampler="Euler a", steps=3, cfg_scale=6.5, seed=321, width=64, height=72))
    assert any(isinstance(u[0], list) and u[0][0][1] == "preview" for u in updates[:-1])  # a live preview came
    (item,) = updates[-1][4]
    path = Path(item["path"])
    assert path == (real_studio.engine.output_dir / "txt2img-images" / dt.date.today().isoformat()
                    / "00000-321.png")
    parsed = ParserManager().parse(str(path))
    sampler = parsed.samplers[0]
    assert [p.value for p in parsed.prompts] == ["a lighthouse at dusk"]
    assert [p.value for p in parsed.negative_prompts] == ["blurry, lowres"]
    assert sampler.name == "Euler a"
    assert (sampler.parameters["steps"], sampler.parameters["cfg_scale"], sampler.parameters["seed"]) == ("3", "6.5", "321")
    assert parsed.metadata["Size"] == "64x72" and sampler.model.name == "tiny"


def test_real_inpaint_keeps_unpainted_pixels(real_studio):
    value = editor_value()
    value["background"] = value["background"].resize((64, 64))
    value["layers"][0] = value["layers"][0].resize((64, 64))
    *_, last = run_stream(real_studio, "inpaint", dict(prompt="x", editor=value, steps=2, width=64, height=64,
                                                       mask_blur=0, seed=1, denoising_strength=0.9))
    (item,) = last[4]
    assert "Mask blur: 0" in item["infotext"] and "Denoising strength: 0.9" in item["infotext"]
    with Image.open(item["path"]) as result:
        out = np.asarray(result.convert("RGB"), np.int16)
    original = np.asarray(value["background"].convert("RGB"), np.int16)
    assert np.array_equal(out[40:, 40:], original[40:, 40:])
    assert Path(item["path"]).parent.parent.name == "img2img-images"


def test_real_missing_checkpoint_is_a_message(real_studio):
    with pytest.raises(gr.Error, match="not found"):
        run_stream(real_studio, "txt2img", dict(prompt="x", checkpoint="nope.safetensors", steps=1))


def test_real_sd_upscale_redraws_in_tiles(real_studio, tmp_path):
    source = tmp_path / "small.png"
    picture(24, 20).save(source)
    sd = dict(enabled=True, prompt="sharp", negative_prompt="", denoising_strength=0.3, steps=2, cfg_scale=7,
              sampler="Euler", seed=12, tile=48, overlap=0)  # one tile: the engine's tiling has its own tests
    seen = []
    gallery_value, info, log, items = real_studio.superres.upscale("Single image", str(source), "", "", "Lanczos", "Scale by",
                                                          2, 0, 0, progress=lambda f, d: seen.append(d), sd=sd)
    path = Path(items[0]["path"])
    with Image.open(path) as image:
        assert image.size == (48, 40)
    assert "SD upscale upscaler: Lanczos" in info and "Seed: 12" in info and "Denoising strength: 0.3" in info
    assert path.parent.parent.name == "img2img-images" and any("SD upscale 1/1: step" in d for d in seen)


def test_extension_tabs_are_shown_and_a_broken_one_is_contained(tmp_path):
    from app.page.build import build_ui
    from core.extensions import ExtensionRegistry

    engine = FakeEngine(tmp_path)
    engine.extensions = ExtensionRegistry(engine)

    def good(api):
        def tab(engine):
            info = gr.Textbox(label="Stored infotext", value="a cat\nSteps: 5, Seed: 9")
            return {"infotext": info, "send_txt2img": gr.Button("To txt2img")}
        tab.title = "Notebook"
        api.add_ui_tab(tab)

    def bad(api):
        def tab(engine):
            raise RuntimeError("no database")
        api.add_ui_tab(tab)

    engine.extensions.add("notebook", good)
    engine.extensions.add("broken", bad)
    demo = build_ui(engine, settings=Settings(tmp_path / "c.json"), styles=StyleDatabase(tmp_path / "s.csv"))
    labels = {b.label for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    assert {"Notebook", "broken"} <= labels
    markdown = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown)]
    assert any("could not build its tab" in str(m) and "no database" in str(m) for m in markdown)
    assert any(isinstance(b, gr.Button) and b.value == "To txt2img" for b in demo.blocks.values())


def test_lora_cards_search_preview_and_insert(tmp_path):
    from app.settings import Settings as S

    lora = tmp_path / "Lora"
    (lora / "styles").mkdir(parents=True)
    (lora / "pastel.safetensors").write_bytes(b"x")
    Image.new("RGB", (8, 8), (255, 0, 0)).save(lora / "pastel.png")
    (lora / "styles" / "ink-outline.safetensors").write_bytes(b"x")
    (lora / "notes.txt").write_text("not a lora")
    engine = FakeEngine(tmp_path)
    engine.lora_dir = lora
    ui = StudioUI(engine, settings=S(tmp_path / "c.json"), styles=StyleDatabase(tmp_path / "s.csv"))
    networks = ui.extra_networks
    assert [(c.name, c.preview) for c in networks.cards("lora")] == [("pastel", lora / "pastel.png"),
                                                                      ("styles/ink-outline", None)]
    assert [c.name for c in networks.cards("lora", "INK")] == ["styles/ink-outline"]
    cards = networks.cards_html("txt2img", "lora")
    assert "pastel.png" in cards and 'data-name="styles/ink-outline"' in cards
    ui.settings.update({"extra_networks_default_multiplier": 0.8})
    pick = json.dumps({"kind": "lora", "name": "pastel"})
    assert networks.pick(pick, "a cat")[0] == "a cat <lora:pastel:0.8>"
    assert networks.pick(pick, "a cat <lora:pastel:0.5>")[0] == "a cat <lora:pastel:0.5>"


def test_disabled_extensions_setting_reaches_the_engine(tmp_path, monkeypatch):
    import app.server as server
    from app.settings import Settings as S, disabled_extensions

    settings = S(tmp_path / "config.json")
    settings.update({"disabled_extensions": " prompt_history, lora ,"})
    assert disabled_extensions(S(tmp_path / "config.json")) == {"prompt_history", "lora"}
    made = []

    import core.engine
    monkeypatch.setattr(core.engine, "Engine", engine_class(tmp_path, made, checkpoints=[]))
    monkeypatch.setattr(server, "run_uvicorn", lambda app, host, port: 0)
    monkeypatch.setattr(server, "create_app", lambda *a, **k: None)
    args = launch_args(device="cpu", precision="fp32", ckpt_dir=tmp_path, outdir=tmp_path,
                       ui_settings_file=tmp_path / "config.json")
    assert server.serve(args) == 0
    assert made[0]["disabled_extensions"] == {"prompt_history", "lora"}


# ------------------------------------------------------------------ model families: refiner, native size, settings


def test_refiner_fields_become_params_and_come_back_from_infotext(tmp_path, studio):
    from app.page.build import build_ui

    demo = build_ui(FakeEngine(tmp_path), settings=Settings(tmp_path / "c.json"), styles=StyleDatabase(tmp_path / "s.csv"))
    blocks = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert [c[1] for c in blocks["txt2img_refiner_checkpoint"].choices] == ["None", "sd15.safetensors", "sub/other.ckpt"]
    assert blocks["txt2img_refiner_checkpoint"].value == "None" and blocks["txt2img_refiner_switch_at"].value == 0.8

    off = studio.generation.make_params("txt2img", studio.generation.form("txt2img", {}))
    assert off.refiner_checkpoint is None
    on = studio.generation.make_params("txt2img", studio.generation.form("txt2img", dict(refiner_checkpoint="sub/other.ckpt",
                                                                   refiner_switch_at=0.6)))
    assert (on.refiner_checkpoint, on.refiner_switch_at) == ("sub/other.ckpt", 0.6)
    assert studio.generation.make_params("img2img", studio.generation.form("img2img", {})).refiner_checkpoint is None
    for tab in ("img2img", "inpaint"):  # every generation tab has its own refiner fields
        assert blocks[f"{tab}_refiner_checkpoint"].value == "None"
        made = studio.generation.make_params(tab, studio.generation.form(tab, dict(refiner_checkpoint="sd15.safetensors", refiner_switch_at=0.3)))
        assert (made.refiner_checkpoint, made.refiner_switch_at) == ("sd15.safetensors", 0.3)

    text = INFOTEXT + ", Refiner: other [0123456789], Refiner switch at: 0.7"
    fields, notes = studio.generation.fields_from_infotext(text, "txt2img")
    assert (fields["refiner_checkpoint"], fields["refiner_switch_at"], notes) == ("sub/other.ckpt", 0.7, [])
    fields, notes = studio.generation.fields_from_infotext(INFOTEXT + ", Refiner: gone [0123456789]", "txt2img")
    assert "refiner_checkpoint" not in fields and notes == ["Refiner: 'gone [0123456789]' is not in the checkpoint folder"]


def followed_sizes(out: list) -> list:
    """Each tab's (width, height) of a Models.follow_checkpoint answer (after the followed state)."""
    from app.page.models import FOLLOW_OUTPUTS

    per_tab = len(FOLLOW_OUTPUTS)
    return [out[1 + i:3 + i] for i in range(0, len(out) - 1, per_tab)]


def test_size_follows_the_checkpoint_until_the_user_changes_it(studio):
    native = {"sd15.safetensors": 512, "sub/other.ckpt": 1024, "v2.safetensors": None}
    studio.engine.checkpoints.append("v2.safetensors")
    studio.engine.default_size = lambda name, allow_paths=False: native[name]
    skip = gr.skip()

    def tabs(*sizes):  # each tab's (width, height), then steps, CFG scale and sampler as the Settings give them
        return [v for width, height in zip(sizes[::2], sizes[1::2]) for v in (width, height, 20, 7.0, "Euler")]

    def skipped(pair):
        return all(isinstance(v, type(skip)) for v in pair)

    # three tabs' (width, height); the second tab's size was changed by the user
    out = studio.models.follow_checkpoint("sub/other.ckpt", None, *tabs(512, 512, 640, 512, 512, 512))
    first, second, third = followed_sizes(out)
    assert out[0]["size"] == [1024, 1024] and first == third == [1024, 1024] and skipped(second)
    out = studio.models.follow_checkpoint("sd15.safetensors", out[0], *tabs(1024.0, 1024.0, 640, 512, 1024, 768))
    first, second, third = followed_sizes(out)
    assert out[0]["size"] == [512, 512] and first == [512, 512] and skipped(second) and skipped(third)
    # a size that cannot be read from the file: the size stays
    out = studio.models.follow_checkpoint("v2.safetensors", {"size": [512, 512]}, *tabs(512, 512, 512, 512, 512, 512))
    assert out[0]["size"] == [512, 512] and all(skipped(pair) for pair in followed_sizes(out))
    # on page load only while the Settings' default size is the stock 512x512
    out = studio.models.follow_checkpoint("sub/other.ckpt", None, *tabs(512, 512), page_load=True)
    assert out[0]["size"] == [1024, 1024] and followed_sizes(out) == [[1024, 1024]]
    studio.settings.update({"default_width": 640})
    out = studio.models.follow_checkpoint("sub/other.ckpt", None, *tabs(640, 512), page_load=True)
    assert "size" not in out[0] and skipped(followed_sizes(out)[0])


def test_model_settings_reach_the_engine_and_are_saved(tmp_path):
    from app.page.build import build_ui

    engine = FakeEngine(tmp_path)
    engine.prediction, engine.zero_terminal_snr = "auto", None
    settings = Settings(tmp_path / "config.json")
    ui = StudioUI(engine, settings=settings, styles=StyleDatabase(tmp_path / "s.csv"))
    message = ui.styles_settings.apply_settings(["sd_model_prediction", "sd_noise_schedule"], ["v", "Zero Terminal SNR"])
    assert "Saved 2 setting(s)" in message and "loads the checkpoint again" in message
    assert (engine.prediction, engine.zero_terminal_snr) == ("v", True)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["sd_model_prediction"], saved["sd_noise_schedule"]) == ("v", "Zero Terminal SNR")
    with pytest.raises(gr.Error, match="What the checkpoint predicts: must be one of auto, eps, v"):
        ui.styles_settings.apply_settings(["sd_model_prediction"], ["x0"])
    # the next start hands the saved values to the engine
    fresh = FakeEngine(tmp_path)
    fresh.prediction, fresh.zero_terminal_snr = "auto", None
    StudioUI(fresh, settings=Settings(tmp_path / "config.json"), styles=StyleDatabase(tmp_path / "s.csv"))
    assert (fresh.prediction, fresh.zero_terminal_snr) == ("v", True)
    demo = build_ui(fresh, settings=Settings(tmp_path / "config.json"), styles=StyleDatabase(tmp_path / "s.csv"))
    radio = demo.studio_settings_components["sd_model_prediction"]
    assert isinstance(radio, gr.Radio) and radio.value == "v"
    assert [c[0] for c in demo.studio_settings_components["sd_noise_schedule"].choices] == ["Default", "Zero Terminal SNR"]


def test_real_native_size_is_read_from_the_file(real_studio):
    assert real_studio.models.native_size("tiny.safetensors") == 512
    assert real_studio.models.native_size("nope.safetensors") is None  # an unknown name leaves the size alone


# ------------------------------------------------------------------ loading checkpoints


def loading_studio(tmp_path) -> StudioUI:
    return StudioUI(FakeEngine(tmp_path, load_seconds=0.6), settings=Settings(tmp_path / "config.json"),
                    styles=StyleDatabase(tmp_path / "styles.csv"))


def percents(texts) -> list[int]:
    import re

    return [int(m.group(1)) for t in texts for m in [re.search(r"Loading \w+… (\d+)%", t)] if m]


def test_loading_bar_reads_well():
    from app.page.messages import loading_html

    bar = loading_html("sd15 <b>", 0.426)
    assert "Loading sd15 &lt;b&gt;… 43%" in bar and 'data-fraction="0.426"' in bar and "width:42.6%" in bar
    assert 'data-fraction="1.000"' in loading_html("x", 1.7)


def test_choosing_a_checkpoint_loads_it_with_a_progress_bar(tmp_path):
    ui = loading_studio(tmp_path)
    assert "No checkpoint loaded yet" in ui.models.model_status() and ui.models.current_checkpoint() is None
    updates = list(ui.models.load_checkpoint("sub/other.ckpt"))
    shown = percents(updates)
    assert len(shown) >= 2 and shown == sorted(shown) and shown[-1] >= 60  # the bar rose while it loaded
    assert all("studio-progress-bar" in u for u in updates if "Loading" in u)
    assert "Loaded: other" in updates[-1]
    assert ui.engine.loaded.name == "other" and ui.models.current_checkpoint() == "sub/other.ckpt"
    # switching back: the other one is let go, the first is loaded
    *_, last = ui.models.load_checkpoint("sd15.safetensors")
    assert "Loaded: sd15" in last and ui.models.current_checkpoint() == "sd15.safetensors"
    # the same again: nothing to load, the status at once
    assert list(ui.models.load_checkpoint("sd15.safetensors"))[-1] == last


def test_a_checkpoint_that_cannot_load_is_a_message(tmp_path):
    ui = loading_studio(tmp_path)
    run = ui.models.load_checkpoint("gone.safetensors")
    updates = []
    with pytest.raises(gr.Error, match="'gone.safetensors' not found"):
        for update in run:
            updates.append(update)
    assert "studio-error" in updates[-1] and "not found" in updates[-1]
    assert ui.engine.loaded is None and ui.engine.loading is None


def test_a_job_shows_the_loading_bar_before_its_steps(tmp_path):
    ui = loading_studio(tmp_path)
    updates = list(ui.generation.stream("txt2img", dict(prompt="a cat", checkpoint="sub/other.ckpt", steps=3, width=64,
                                             height=64, seed=5)))
    texts = [u[3] for u in updates if isinstance(u[3], str)]
    loading = [i for i, t in enumerate(texts) if "Loading other…" in t]
    steps = [i for i, t in enumerate(texts) if "Step" in t]
    assert loading and steps and max(loading) < min(steps)
    assert updates[-1][4][0]["seed"] == 5


def test_the_page_follows_a_load_started_elsewhere(tmp_path):
    """A page opened while the server loads at start sees the bar, then the loaded model."""
    ui = loading_studio(tmp_path)
    loader = threading.Thread(target=ui.engine.load, args=("sd15.safetensors",))
    loader.start()
    while ui.engine.loading is None and loader.is_alive():
        time.sleep(0.01)
    assert ui.models.current_checkpoint() == "sd15.safetensors"  # what on_load puts in the dropdown
    updates = list(ui.models.watch_model())
    loader.join()
    assert percents(updates) and "Loaded: sd15" in updates[-1]


def test_page_wires_the_checkpoint_status_and_the_load_at_start_setting(tmp_path):
    from app.page.build import build_ui

    demo = build_ui(FakeEngine(tmp_path, load_seconds=0.6), settings=Settings(tmp_path / "c.json"),
                    styles=StyleDatabase(tmp_path / "s.csv"))
    status = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "checkpoint_status")
    checkpoint = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "checkpoint")
    loads = [fn for fn in demo.fns.values() if getattr(fn.fn, "__name__", "") == "load_checkpoint"]
    assert len(loads) == 1
    (load,) = loads
    assert load.targets == [(checkpoint._id, "change")]
    assert [o._id for o in load.outputs] == [status._id]
    assert (load.concurrency_id, load.concurrency_limit) == ("studio-job", 1)  # after a running job
    setting = demo.studio_settings_components["sd_checkpoint_load_at_start"]
    assert isinstance(setting, gr.Checkbox) and setting.value is True


def test_real_checkpoint_switch_through_the_page(real_studio):
    engine = real_studio.engine
    engine.unload()
    assert "No checkpoint loaded yet" in real_studio.models.model_status()
    *_, last = real_studio.models.load_checkpoint("tiny.safetensors")
    assert "Loaded: tiny" in last and engine.loaded.name == "tiny" and engine.loading is None
    assert real_studio.models.current_checkpoint() == "tiny.safetensors"


def test_first_run_panel_offers_a_download_only_without_a_checkpoint_of_ones_own(tmp_path):
    from app.page.build import build_ui
    from core.demo import DEMO_NAME

    def panel(names):
        engine = FakeEngine(tmp_path)
        engine.checkpoints = list(names)
        demo = build_ui(engine, settings=Settings(tmp_path / "c.json"), styles=StyleDatabase(tmp_path / "s.csv"))
        blocks = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
        checkpoint = blocks["checkpoint"]
        return blocks["model_download"], checkpoint, demo

    offered, checkpoint, demo = panel([DEMO_NAME])
    assert offered.visible and offered.open
    assert checkpoint.value == DEMO_NAME and "demo model" in checkpoint.choices[0][0]  # labelled as the demo
    assert any(getattr(fn, "api_name", None) == "download_model" for fn in demo.fns.values())
    hidden, checkpoint, _ = panel(["mine.safetensors", DEMO_NAME])
    assert not hidden.visible and checkpoint.value == "mine.safetensors"
