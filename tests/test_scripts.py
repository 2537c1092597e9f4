"""A1111's scripts (core/scripts/) by API: x/y/z plot, prompt matrix, prompts from file or
textbox, sd upscale; their argument orders, grids (size, labels, saved with infotext, never
overwritten), batch grids, GET /scripts and /script-info, and the errors that name an argument.
The tiny checkpoints make real pictures (2 steps at 64x64) where pixels matter."""
from __future__ import annotations

import base64
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

from app.api.limits import ApiLimits
from app.server import create_app
from core.images import read_infotext
from core.scripts.grids import grid_rows, image_grid, labelled_grid
from core.scripts.prompt_matrix import combinations
from core.scripts.prompts_from_file import parse_line
from core.scripts.xyz_plot import axes_for, axis_values, find_axis

pytestmark = pytest.mark.usefixtures("one_thread")

LIMITS = ApiLimits(max_steps=50, max_size=256, max_images=12)
CELL = 64


@pytest.fixture(scope="module")
def engine(tiny_checkpoints, tmp_path_factory):
    from core.engine import Engine

    root = tmp_path_factory.mktemp("scripts")
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    shutil.copy(tiny_checkpoints["safetensors"], ckpts / "tiny.safetensors")
    shutil.copy(tiny_checkpoints["safetensors"], ckpts / "tiny-copy.safetensors")
    (root / "no-extensions").mkdir()
    return Engine(device="cpu", ckpt_dir=ckpts, output_dir=root / "outputs", hash_cache=root / "hashes.json",
                  models_dir=root / "models", extensions_dir=root / "no-extensions")


@pytest.fixture(scope="module")
def client(engine, tmp_path_factory):
    app = create_app(engine, api=True, ui=False, limits=LIMITS,
                     options_path=tmp_path_factory.mktemp("scripts-config") / "config.json")
    with TestClient(app, base_url="http://127.0.0.1") as test_client:
        yield test_client


def tiny(**extra) -> dict:
    return {"prompt": "a red circle", "steps": 2, "width": CELL, "height": CELL, "seed": 3, "sampler_name": "Euler",
            "save_images": True,
            **extra}


def decode(text: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(text)))


def encode(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def xyz_args(x_type, x_values, y_type=0, y_values="", **options) -> list:
    """A1111's 18 script_args of the X/Y/Z plot."""
    args = [x_type, x_values, [], y_type, y_values, [], 0, "", [], True, False, False, False, False, False, False, 0,
            False]
    names = ["draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds", "vary_seeds_x",
             "vary_seeds_y", "vary_seeds_z", "margin_size", "csv_mode"]
    for name, value in options.items():
        args[9 + names.index(name)] = value
    return args


def grids(engine, kind: str = "txt2img") -> list[Path]:
    return sorted((Path(engine.output_dir) / f"{kind}-grids").rglob("*.png"))


# ---------------------------------------------------------------- listing


def test_scripts_are_listed_with_a1111s_names_and_arguments(client):
    names = client.get("/sdapi/v1/scripts").json()
    assert names == {"txt2img": ["prompt matrix", "prompts from file or textbox", "x/y/z plot"],
                     "img2img": ["prompt matrix", "prompts from file or textbox", "sd upscale", "x/y/z plot"]}
    info = client.get("/sdapi/v1/script-info").json()
    by_name = {(s["name"], s["is_img2img"]): s for s in info}
    assert set(by_name) == {(n, False) for n in names["txt2img"]} | {(n, True) for n in names["img2img"]}
    xyz = by_name[("x/y/z plot", False)]
    assert xyz["is_alwayson"] is False and len(xyz["args"]) == 18
    assert set(xyz["args"][0]) == {"label", "value", "minimum", "maximum", "step", "choices"}
    assert xyz["args"][0]["choices"][:5] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps"]
    assert xyz["args"][16]["maximum"] == 500  # margin_size
    upscale = by_name[("sd upscale", True)]["args"]
    assert [a["label"] for a in upscale] == ["Info", "Tile overlap", "Upscaler", "Scale Factor"]
    assert "Lanczos" in upscale[2]["choices"]


def test_the_axis_lists_follow_a1111s_order_per_tab():
    txt2img = [a.label for a in axes_for(False)]
    img2img = [a.label for a in axes_for(True)]
    assert txt2img[:12] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale",
                            "Prompt S/R", "Prompt order", "Sampler", "Hires sampler", "Checkpoint name"]
    assert img2img[:11] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "CFG Scale", "Image CFG Scale",
                            "Prompt S/R", "Prompt order", "Sampler", "Checkpoint name"]
    assert find_axis("cfg scale", False, "x_type").label == "CFG Scale"
    assert find_axis(7, False, "x_type").label == "Prompt S/R" and find_axis("7", True, "x_type").label == "Prompt S/R"
    assert "Schedule type" in txt2img and "Denoising" in img2img


@pytest.mark.parametrize("text, kind, expected", [
    ("1, 2,3", int, [1, 2, 3]),
    ("1-5", int, [1, 2, 3, 4, 5]),
    ("1-10 (+3)", int, [1, 4, 7, 10]),
    ("10-1 (-4)", int, [10, 6]),  # A1111 counts down to end + 1: 2 is left out, as there
    ("1-10 [4]", int, [1, 4, 7, 10]),
    ("5, 1-3", int, [5, 1, 2, 3]),
    ("1.5-2.5 (+0.5)", float, [1.5, 2.0, 2.5]),
    ("0-1 [3]", float, [0.0, 0.5, 1.0]),
])
def test_number_values_use_a1111s_range_syntax(text, kind, expected):
    axis = find_axis("Steps" if kind is int else "CFG Scale", False, "x_type")
    assert axis_values(axis, text, [], False, "x") == expected


def test_text_values_are_csv_and_choices_come_from_the_dropdown():
    prompt_sr = find_axis("Prompt S/R", False, "x_type")
    assert axis_values(prompt_sr, 'red,"blue, green",', [], False, "x") == ["red", "blue, green", ""]
    sampler = find_axis("Sampler", False, "x_type")
    assert axis_values(sampler, "", ["Euler", "DDIM"], False, "x") == ["Euler", "DDIM"]
    assert axis_values(sampler, "Euler a, Heun", ["Euler"], True, "x") == ["Euler a", "Heun"]  # csv_mode


def test_prompt_matrix_combinations_and_prompts_from_file_lines():
    parts, prompts = combinations("a cat|red|big", False, ", ")
    assert parts == ["a cat", "red", "big"]
    assert prompts == ["a cat", "a cat, red", "a cat, big", "a cat, red, big"]
    assert combinations("a cat|red", True, " ")[1] == ["a cat", "red a cat"]
    assert parse_line('--prompt "a dog" in snow --steps 10 --seed 5 --cfg_scale 4.5', 1) == {
        "prompt": "a dog in snow", "steps": 10, "seed": 5, "cfg_scale": 4.5}
    assert parse_line("just a prompt", 1) == {"prompt": "just a prompt"}


def test_grid_layout_and_labels_draw_outside_the_cells():
    cells = [Image.new("RGB", (CELL, CELL), (0, 0, 255)) for _ in range(6)]
    assert grid_rows(6) == 2 and grid_rows(2) == 1 and grid_rows(4) == 2
    assert image_grid(cells).size == (3 * CELL, 2 * CELL)
    labelled = labelled_grid(cells, ["Seed: 1", "Seed: 2", "Seed: 3"], ["Steps: 1", "Steps: 2"], margin=4)
    left, top = labelled.width - (3 * CELL + 8), labelled.height - (2 * CELL + 4)
    assert left == CELL * 3 // 4 and top > 0
    strip = pixels(labelled)[:top, left:]
    assert (strip < 128).any(), "the column labels are drawn in the top margin"
    assert (pixels(labelled)[top:, :left] < 128).any(), "the row labels are drawn in the left margin"


# ---------------------------------------------------------------- x/y/z plot


def test_xyz_plot_makes_a_labelled_2x3_grid_saved_with_its_infotext(client, engine):
    before = grids(engine)
    response = client.post("/sdapi/v1/txt2img", json=tiny(
        script_name="X/Y/Z Plot", script_args=xyz_args(1, "1, 2", 4, "1-3", include_lone_images=True)))
    assert response.status_code == 200, response.text
    body = response.json()
    images = [decode(i) for i in body["images"]]
    assert len(images) == 1 + 6
    grid = images[0]
    assert grid.width > 2 * CELL and grid.height > 3 * CELL  # the labels' margins
    left, top = grid.width - 2 * CELL, grid.height - 3 * CELL
    assert left == CELL * 3 // 4, "the row labels' strip: three quarters of a cell"
    assert (pixels(grid)[:top, left:] < 128).any() and (pixels(grid)[top:, :left] < 128).any()
    cells = [grid.crop((left + c * CELL, top + r * CELL, left + (c + 1) * CELL, top + (r + 1) * CELL))
             for r in range(3) for c in range(2)]
    for cell, picture in zip(cells, images[1:]):
        assert np.array_equal(pixels(cell), pixels(picture))
    assert not np.array_equal(pixels(images[1]), pixels(images[2])), "seeds 1 and 2 along X differ"
    info = json.loads(body["info"])
    assert info["all_seeds"][1:] == [1, 2, 1, 2, 1, 2] and info["index_of_first_image"] == 1
    infotexts = [json.loads(body["info"])["infotexts"][i] for i in range(7)]
    assert "Steps: 1," in infotexts[1] and "Steps: 3," in infotexts[6]
    saved = sorted(set(grids(engine)) - set(before))
    assert len(saved) == 1 and Image.open(saved[0]).size == grid.size
    stored = read_infotext(saved[0])
    assert stored.startswith("a red circle\nSteps: 1, Sampler: Euler") and "Seed: 1," in stored
    assert "X Type: Seed" in stored and 'Y Values: "1, 2, 3"' in stored

    again = client.post("/sdapi/v1/txt2img", json=tiny(script_name="x/y/z plot",
                                                       script_args=xyz_args("Seed", "1, 2", "Steps", "1-3")))
    assert again.status_code == 200 and len(again.json()["images"]) == 1  # no sub images asked for
    newer = sorted(set(grids(engine)) - set(before) - set(saved))
    assert len(newer) == 1 and newer[0] != saved[0]
    assert Image.open(saved[0]).size == grid.size, "the first grid is still there, not overwritten"
    assert np.array_equal(pixels(Image.open(newer[0])), pixels(grid))


def test_xyz_plot_prompt_sr_replaces_in_both_prompts(client):
    body = client.post("/sdapi/v1/txt2img", json=tiny(
        prompt="a red circle", negative_prompt="red noise", script_name="x/y/z plot",
        script_args=xyz_args("Prompt S/R", "red, blue", include_lone_images=True, draw_legend=False))).json()
    infotexts = json.loads(body["info"])["infotexts"]
    assert infotexts[1].startswith("a red circle\nNegative prompt: red noise")
    assert infotexts[2].startswith("a blue circle\nNegative prompt: blue noise")
    assert decode(body["images"][0]).size == (2 * CELL, CELL)


def test_xyz_plot_axes_with_choices(client):
    args = xyz_args("Sampler", "", "Checkpoint name", "", include_lone_images=True, draw_legend=False)
    args[2] = ["Euler", "DDIM"]
    args[5] = ["tiny", "tiny-copy"]
    args[6:9] = ["Schedule type", "Karras", []]
    body = client.post("/sdapi/v1/txt2img", json=tiny(script_name="x/y/z plot", script_args=args)).json()
    assert decode(body["images"][0]).size == (2 * CELL, 2 * CELL)  # no legend: the cells alone
    infotexts = json.loads(body["info"])["infotexts"][1:]
    assert "Sampler: Euler," in infotexts[0] and "Sampler: DDIM," in infotexts[1]
    assert "Model: tiny," in infotexts[0] + "," and "Model: tiny-copy" in infotexts[2]
    assert all("Schedule type: Karras" in text for text in infotexts)


def test_xyz_plot_vary_seeds_and_a_lora_weight_by_prompt_sr(client):
    args = xyz_args("CFG Scale", "3, 9", vary_seeds_x=True, include_lone_images=True)
    body = client.post("/sdapi/v1/txt2img", json=tiny(seed=40, script_name="x/y/z plot", script_args=args)).json()
    assert json.loads(body["info"])["all_seeds"][1:] == [40, 41]
    # a LoRA's weight is a prompt tag: Prompt S/R gives each cell its own weight
    lora = xyz_args("Prompt S/R", "<lora:grain:0.5>, <lora:grain:1>", include_lone_images=True)
    body = client.post("/sdapi/v1/txt2img", json=tiny(prompt="a cat <lora:grain:0.5>", script_name="x/y/z plot",
                                                       script_args=lora)).json()
    prompts = [text.split("\n")[0] for text in json.loads(body["info"])["infotexts"][1:]]
    assert prompts == ["a cat <lora:grain:0.5>", "a cat <lora:grain:1>"]


@pytest.mark.parametrize("args, status, names", [
    (xyz_args("Sigma Churn", "0, 1"), 422, "x_type"),
    (xyz_args("VAE", "None"), 422, "VAE"),
    (xyz_args(99, "1"), 422, "x_type"),
    (xyz_args("Steps", "1, two"), 422, "x_values"),
    (xyz_args("Steps", "1-1000000"), 422, "x_values"),
    (xyz_args("Steps", "1, 99"), 422, "steps"),
    (xyz_args("Sampler", "Nope", csv_mode=True), 404, "x_values"),
    (xyz_args("Checkpoint name", "missing", csv_mode=True), 404, "x_values"),
    (xyz_args("Prompt S/R", "green, blue"), 422, "x_values"),
    (xyz_args("Seed", "1-13"), 422, "12 images"),
    (xyz_args("Seed", "1", margin_size=9000), 422, "margin_size"),
    (xyz_args("Seed", "1", draw_legend="perhaps"), 422, "draw_legend"),
])
def test_xyz_plot_bad_arguments_are_refused_naming_them(client, args, status, names):
    response = client.post("/sdapi/v1/txt2img", json=tiny(script_name="x/y/z plot", script_args=args))
    assert response.status_code == status, response.text
    assert names in response.text


def test_an_unknown_script_or_bad_args_are_refused(client):
    unknown = client.post("/sdapi/v1/txt2img", json=tiny(script_name="loopback"))
    assert unknown.status_code == 422 and "script_name" in unknown.text and "x/y/z plot" in unknown.text
    txt2img_upscale = client.post("/sdapi/v1/txt2img", json=tiny(script_name="sd upscale"))
    assert txt2img_upscale.status_code == 422 and "script_name" in txt2img_upscale.text
    not_a_list = client.post("/sdapi/v1/txt2img", json=tiny(script_name="prompt matrix", script_args="x"))
    assert not_a_list.status_code == 422


# ---------------------------------------------------------------- prompt matrix


def test_prompt_matrix_makes_every_combination_in_a_labelled_grid(client, engine):
    before = grids(engine)
    body = client.post("/sdapi/v1/txt2img", json=tiny(
        prompt="a circle|red|large", script_name="prompt matrix",
        script_args=[False, True, "positive", "comma", 2])).json()
    images = [decode(i) for i in body["images"]]
    assert len(images) == 1 + 4
    grid = images[0]
    # 2 parts: 2 columns (red) x 2 rows (large), 2 px margins, labels above and to the left
    assert grid.width == CELL * 3 // 4 + 2 * CELL + 2 and grid.height > 2 * CELL + 2
    top = pixels(grid)[:grid.height - (2 * CELL + 2), CELL * 3 // 4:]
    assert (top.max(axis=2) < 60).any(), "a column's own part in black"
    grey = (np.ptp(top, axis=2) == 0) & (abs(top[..., 0] - 153) < 4)
    assert grey.any(), "the part a column leaves out in grey, struck through"
    info = json.loads(body["info"])
    assert [t.split("\n")[0] for t in info["infotexts"][1:]] == [
        "a circle", "a circle, red", "a circle, large", "a circle, red, large"]
    assert info["all_seeds"][1:] == [3, 4, 5, 6]
    saved = sorted(set(grids(engine)) - set(before))
    assert len(saved) == 1 and read_infotext(saved[0]).startswith("a circle\n")
    negative = client.post("/sdapi/v1/txt2img", json=tiny(
        negative_prompt="blur|noise", script_name="prompt matrix", script_args=[True, False, "negative", "space", 0]))
    texts = json.loads(negative.json()["info"])["infotexts"][1:]
    assert [t.split("Negative prompt: ")[1].split("\n")[0] for t in texts] == ["blur", "noise blur"]
    assert json.loads(negative.json()["info"])["all_seeds"][1:] == [3, 3]


# ---------------------------------------------------------------- prompts from file or textbox


def test_prompts_from_textbox_runs_each_line_with_its_options(client):
    text = 'a house\n\n--prompt "a boat" --negative_prompt "fog" --steps 3 --seed 5 --batch_size 2\n'
    body = client.post("/sdapi/v1/txt2img", json=tiny(prompt="", script_name="Prompts from file or textbox",
                                                      script_args=[False, False, "start", text])).json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 3 and info["all_seeds"] == [3, 5, 6]
    assert info["infotexts"][0].startswith("a house\nSteps: 2")
    assert info["infotexts"][1].startswith("a boat\nNegative prompt: fog\nSteps: 3")
    old_form = client.post("/sdapi/v1/txt2img", json=tiny(prompt="oil painting", script_name="prompts from file or textbox",
                                                          script_args=[True, False, "a cat\na dog"])).json()
    old = json.loads(old_form["info"])
    assert old["all_seeds"] == [3, 4] and old["infotexts"][1].startswith("a dog oil painting")
    end = client.post("/sdapi/v1/txt2img", json=tiny(prompt="oil painting", script_name="prompts from file or textbox",
                                                     script_args=[False, False, "end", "a cat"])).json()
    assert json.loads(end["info"])["infotexts"][0].startswith("oil painting a cat")


@pytest.mark.parametrize("text, names", [
    ("--prompt cat --colour red", "--colour"),
    ("--prompt cat --outpath_samples /tmp", "--outpath_samples"),
    ("--prompt cat --steps many", "--steps"),
    ("--prompt cat --steps 999", "line 1"),
    ("\n".join(["cat"] * 13), "12 images"),
    ("", "prompt_txt"),
])
def test_prompts_from_file_refuses_what_it_cannot_run(client, text, names):
    response = client.post("/sdapi/v1/txt2img", json=tiny(script_name="prompts from file or textbox",
                                                          script_args=[False, False, "start", text]))
    assert response.status_code == 422 and names in response.text, response.text


# ---------------------------------------------------------------- sd upscale


def test_sd_upscale_the_issues_example_and_an_upscaler_index(client, engine):
    source = Image.new("RGB", (CELL, CELL), (200, 30, 30))
    ImageDraw.Draw(source).ellipse((10, 10, 50, 50), fill=(30, 30, 220))
    request = tiny(init_images=[encode(source)], denoising_strength=0.2, script_name="sd upscale",
                   script_args=["", 8, "Lanczos", 2.0])
    response = client.post("/sdapi/v1/img2img", json=request)
    assert response.status_code == 200, response.text
    (image,) = [decode(i) for i in response.json()["images"]]
    assert image.size == (2 * CELL, 2 * CELL)
    infotext = json.loads(response.json()["info"])["infotexts"][0]
    assert "SD upscale overlap: 8" in infotext and "SD upscale upscaler: Lanczos" in infotext
    upscalers = [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    by_index = client.post("/sdapi/v1/img2img", json={**request, "script_args": ["", 8, upscalers.index("Nearest"), 1.5]})
    assert by_index.status_code == 200, by_index.text
    assert decode(by_index.json()["images"][0]).size == (96, 96)
    assert "SD upscale upscaler: Nearest" in json.loads(by_index.json()["info"])["infotexts"][0]
    for args, name in ((["", 8, "Nope", 2.0], "upscaler"), (["", 8, 999, 2.0], "upscaler"),
                       (["", 64, "Lanczos", 2.0], "overlap"), (["", 8, "Lanczos", 20], "scale_factor")):
        refused = client.post("/sdapi/v1/img2img", json={**request, "script_args": args})
        assert refused.status_code == 422 and name in refused.text, refused.text


# ---------------------------------------------------------------- batch grids


def test_a_batch_saves_a_grid_unless_grid_save_is_off(client, engine):
    before = grids(engine)
    response = client.post("/sdapi/v1/txt2img", json=tiny(batch_size=2, n_iter=2))
    assert response.status_code == 200 and len(response.json()["images"]) == 4  # the answer is unchanged
    saved = sorted(set(grids(engine)) - set(before))
    assert len(saved) == 1 and Image.open(saved[0]).size == (2 * CELL, 2 * CELL)
    assert read_infotext(saved[0]).startswith("a red circle\nSteps: 2")
    off = client.post("/sdapi/v1/txt2img", json=tiny(batch_size=2, override_settings={"grid_save": False}))
    assert off.status_code == 200 and sorted(set(grids(engine)) - set(before)) == saved
    one = client.post("/sdapi/v1/txt2img", json=tiny())
    assert one.status_code == 200 and sorted(set(grids(engine)) - set(before)) == saved
    plot = tiny(script_name="x/y/z plot", script_args=xyz_args("Seed", "1, 2"), do_not_save_grid=True)
    assert client.post("/sdapi/v1/txt2img", json=plot).status_code == 200
    unsaved = client.post("/sdapi/v1/txt2img", json={**plot, "do_not_save_grid": False, "save_images": False})
    assert unsaved.status_code == 200 and len(unsaved.json()["images"]) == 1
    assert sorted(set(grids(engine)) - set(before)) == saved, "do_not_save_grid and save_images false save none"


# ---------------------------------------------------------------- the page (its callbacks, a stand-in engine)


@pytest.fixture
def studio(tmp_path):
    from app.page.studio import StudioUI
    from app.settings import Settings
    from app.styles import StyleDatabase
    from fake_engine import FakeEngine

    return StudioUI(FakeEngine(tmp_path), settings=Settings(tmp_path / "config.json"),
                    styles=StyleDatabase(tmp_path / "styles.csv"))


def test_the_page_runs_an_xyz_plot_grid_first_and_saves_it(studio):
    form = {"prompt": "a cat", "steps": 2, "width": CELL, "height": CELL, "seed": 5, "script": "X/Y/Z plot",
            "xyz_x_type": "Steps", "xyz_x_values": "1, 2", "xyz_y_type": "CFG Scale", "xyz_y_values": "3-5 [3]",
            "xyz_include_lone_images": True}
    job = studio.generation.run_job("txt2img", studio.generation.form("txt2img", form))
    assert len(job.items) == 1 + 6
    grid_path = Path(job.items[0]["path"])
    assert grid_path.parent.parent.name == "txt2img-grids"
    grid = Image.open(grid_path)
    assert grid.width == CELL * 3 // 4 + 2 * CELL and grid.height > 3 * CELL
    assert "X Type: Steps" in read_infotext(grid_path)
    calls = studio.generation.engine.calls
    assert [(c.params.steps, c.params.cfg_scale) for c in calls] == [(1, 3.0), (2, 3.0), (1, 4.0), (2, 4.0),
                                                                     (1, 5.0), (2, 5.0)]
    assert all(Path(item["path"]).parent.parent.name == "txt2img-images" for item in job.items[1:])


def test_the_page_names_a_bad_script_argument_and_saves_batch_grids(studio):
    import gradio as gr

    bad = {"script": "X/Y/Z plot", "xyz_x_type": "Steps", "xyz_x_values": "1, lots"}
    with pytest.raises(gr.Error, match="x_values"):
        studio.generation.run_job("txt2img", studio.generation.form("txt2img", bad))
    job = studio.generation.run_job("txt2img", studio.generation.form(
        "txt2img", {"prompt": "a cat", "steps": 1, "width": CELL, "height": CELL, "batch_size": 2}))
    assert len(job.items) == 2  # the batch grid is saved, not shown
    saved = list((Path(studio.generation.engine.output_dir) / "txt2img-grids").rglob("*.png"))
    assert len(saved) == 1 and Image.open(saved[0]).size == (2 * CELL, CELL)
    studio.settings.update({"grid_save": False})
    studio.generation.run_job("txt2img", studio.generation.form(
        "txt2img", {"prompt": "a cat", "steps": 1, "width": CELL, "height": CELL, "batch_size": 2}))
    assert len(list((Path(studio.generation.engine.output_dir) / "txt2img-grids").rglob("*.png"))) == 1


def test_the_page_sd_upscale_and_prompt_matrix_forms_give_a1111s_args():
    from app.forms import complete_form, script_from_form

    upscale = script_from_form("img2img", complete_form("img2img", {"script": "SD upscale", "sdu_overlap": 8,
                                                                    "sdu_upscaler": "Lanczos", "sdu_scale": 2.0}))
    assert upscale == ("sd upscale", ["", 8, "Lanczos", 2.0])
    matrix = script_from_form("txt2img", complete_form("txt2img", {"script": "Prompt matrix",
                                                                   "matrix_different_seeds": True}))
    assert matrix == ("prompt matrix", [False, True, "positive", "comma", 0])
    assert script_from_form("txt2img", complete_form("txt2img", {})) == (None, [])


def test_the_page_runs_sd_upscale_on_img2img(studio):
    form = {"prompt": "a cat", "steps": 2, "width": CELL, "height": CELL, "init_image": Image.new("RGB", (CELL, CELL)),
            "script": "SD upscale", "sdu_overlap": 16, "sdu_upscaler": "Lanczos", "sdu_scale": 2.0}
    job = studio.generation.run_job("img2img", studio.generation.form("img2img", form))
    (call,) = studio.generation.engine.calls
    assert call.kind == "sd_upscale" and len(job.items) == 1
    assert Image.open(job.items[0]["path"]).size == (2 * CELL, 2 * CELL)


def test_xyz_plot_on_img2img_uses_its_own_axis_list(client):
    source = Image.new("RGB", (CELL, CELL), (200, 30, 30))
    img2img_axes = [a.label for a in axes_for(True)]
    args = xyz_args(img2img_axes.index("Denoising"), "0.2, 0.6", include_lone_images=True, draw_legend=False)
    response = client.post("/sdapi/v1/img2img", json=tiny(init_images=[encode(source)], script_name="x/y/z plot",
                                                           script_args=args))
    assert response.status_code == 200, response.text
    infotexts = json.loads(response.json()["info"])["infotexts"]
    assert "Denoising strength: 0.2" in infotexts[1] and "Denoising strength: 0.6" in infotexts[2]
    assert decode(response.json()["images"][0]).size == (2 * CELL, CELL)
    hires = client.post("/sdapi/v1/img2img", json=tiny(init_images=[encode(source)], script_name="x/y/z plot",
                                                        script_args=xyz_args("Hires steps", "1, 2")))
    assert hires.status_code == 422 and "Hires steps" in hires.text  # a txt2img axis


def test_a_checkpoint_axis_loads_each_checkpoint_once_the_grid_keeps_its_order(studio):
    form = {"prompt": "a cat", "steps": 2, "width": CELL, "height": CELL, "seed": 5, "script": "X/Y/Z plot",
            "xyz_x_type": "Checkpoint name", "xyz_x_values": "sd15.safetensors, sub/other.ckpt",
            "xyz_y_type": "Steps", "xyz_y_values": "1, 2", "xyz_include_lone_images": True}
    job = studio.generation.run_job("txt2img", studio.generation.form("txt2img", form))
    calls = studio.generation.engine.calls
    assert [(c.params.checkpoint, c.params.steps) for c in calls] == [
        ("sd15.safetensors", 1), ("sd15.safetensors", 2), ("sub/other.ckpt", 1), ("sub/other.ckpt", 2)]
    shown = [(item["infotext"].split("Model: ")[1], item["infotext"].split("Steps: ")[1][0]) for item in job.items[1:]]
    assert shown == [("sd15", "1"), ("other", "1"), ("sd15", "2"), ("other", "2")]


def test_a_plan_reports_progress_over_all_its_jobs_and_stops_at_an_interrupt(tmp_path):
    from core.params import GenerationParams
    from core.scripts import ScriptContext, run_plan
    from core.scripts.xyz_plot import XyzPlot
    from fake_engine import FakeEngine

    engine = FakeEngine(tmp_path)
    context = ScriptContext(find_checkpoint=lambda name, field: name,
                            upscalers=lambda: ["Lanczos"], random_seed=lambda: 99)
    params = GenerationParams(prompt="a cat", steps=2, width=CELL, height=CELL, batch_count=2)
    plan = XyzPlot().plan(params, xyz_args("Steps", "1, 2, 3"), False, context)
    assert [job.seed for job in plan.jobs] == [99, 99, 99]  # -1 fixed once, as A1111 (unless Keep -1)
    seen = []
    outcome = run_plan(engine, plan, "txt2img", progress=lambda p: seen.append((p.batch, p.batches)), save=False)
    assert sorted(set(seen)) == [(b, 6) for b in range(6)]
    assert len(outcome.pictures) == 6 and len(outcome.grids) == 1 and outcome.grids[0].path is None

    def stop_in_the_second_job(p):
        if p.batch == 2:
            engine.interrupt()

    stopped = run_plan(engine, plan, "txt2img", progress=stop_in_the_second_job, save=False)
    assert len(stopped.pictures) == 2, "the first job's two pictures; the second stopped, the third never ran"
    grid = pixels(stopped.grids[0].image)
    x_left = grid.shape[1] - 3 * CELL
    assert grid[-CELL:, x_left + CELL:].max() == 0, "the cells not made are blank, as A1111 leaves them"
    assert grid[-CELL:, x_left:x_left + CELL].max() > 0
