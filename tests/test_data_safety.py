"""Data kept, never silently overwritten (issue #14): an unreadable config.json or styles.csv is
kept aside, never replaced by a file holding only the new keys or rows; an output folder that
cannot be written does not lose the picture; jobs killed with the server do not stay "running".
"""
from __future__ import annotations

import errno
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from app.settings import Settings
from app.styles import StyleDatabase, StyleError
from test_api import engine, models_dir, serve  # noqa: F401 - fixtures: a live server over tiny models

ROOT = Path(__file__).resolve().parent.parent

UNREADABLE_CONFIGS = {
    "broken JSON": b'{"outdir": "/data/pictures", "default_steps": 31,',
    "a list": b'[{"outdir": "/data/pictures"}]',
    "a string": b'"outdir"',
    "not UTF-8": b'{"outdir": "/data/\xff\xfepictures"}',
}


def bad_files(folder: Path, name: str) -> list[Path]:
    return sorted(folder.glob(f"{name}.bad-*"))


# ---------------------------------------------------------------- config.json


@pytest.mark.parametrize("content", UNREADABLE_CONFIGS.values(), ids=UNREADABLE_CONFIGS.keys())
def test_page_settings_keep_an_unreadable_config_aside(tmp_path, content):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    settings = Settings(path)
    assert settings["default_steps"] == 20  # the defaults, said so
    kept = bad_files(tmp_path, "config.json")
    assert len(kept) == 1 and kept[0].read_bytes() == content
    assert any(kept[0].name in warning for warning in settings.load_warnings), settings.load_warnings

    settings.update({"default_steps": 33})
    assert json.loads(path.read_text()) == {"default_steps": 33}
    assert kept[0].read_bytes() == content  # the user's file is still there, whole


@pytest.mark.parametrize("content", UNREADABLE_CONFIGS.values(), ids=UNREADABLE_CONFIGS.keys())
def test_api_options_keep_an_unreadable_config_aside(tmp_path, content):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    store = Settings(path)
    kept = bad_files(tmp_path, "config.json")
    assert len(kept) == 1 and kept[0].read_bytes() == content
    assert kept[0].name in store.notice
    store.update({"CLIP_stop_at_last_layers": 2})
    assert json.loads(path.read_text()) == {"CLIP_stop_at_last_layers": 2}
    assert kept[0].read_bytes() == content


def test_a_file_broken_while_running_is_set_aside_at_the_next_save_and_never_over_an_earlier_one(tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b"[1]")
    settings, options = Settings(path), Settings(path)  # as the page and the API of two servers
    first = bad_files(tmp_path, "config.json")
    assert len(first) == 1
    # both readers report the one file that was set aside
    assert first[0].name in options.notice and any(first[0].name in w for w in settings.load_warnings)

    for attempt, (writer, change) in enumerate([(options, {"emphasis": "No norm"}),
                                                (settings, {"preview_every": 2}),
                                                (options, {"CLIP_stop_at_last_layers": 3})]):
        broken = f'{{"from the user, attempt {attempt}": '.encode()
        path.write_bytes(broken)  # hand-edited while the server runs, and left broken
        if writer is settings:
            writer.update(change)
            assert writer.save_notice and "config.json.bad-" in writer.save_notice
        else:
            writer.update(change)
        kept = bad_files(tmp_path, "config.json")
        assert len(kept) == 2 + attempt, "an earlier .bad file was replaced"
        assert sorted(p.read_bytes() for p in kept) == sorted(
            [b"[1]"] + [f'{{"from the user, attempt {a}": '.encode() for a in range(attempt + 1)])
        assert json.loads(path.read_text()) == change


def test_a_wrong_value_for_one_key_drops_nothing(tmp_path):
    path = tmp_path / "config.json"
    stored = {"jpeg_quality": "high", "preview_every": 3, "outdir": "/data/pictures", "CLIP_stop_at_last_layers": "two",
              "emphasis": "No norm", "a later version's key": [1, 2]}
    path.write_text(json.dumps(stored))
    settings, options = Settings(path), Settings(path)  # as the page and the API of two servers
    assert bad_files(tmp_path, "config.json") == []
    assert (settings["preview_every"], settings["outdir"], settings["jpeg_quality"]) == (3, "/data/pictures", 90)
    assert (options.get("emphasis"), options.get("CLIP_stop_at_last_layers")) == ("No norm", 1)

    settings.update({"default_steps": 40})
    options.update({"enable_pnginfo": False})
    assert json.loads(path.read_text()) == {**stored, "default_steps": 40, "enable_pnginfo": False}


def test_apply_on_the_page_says_the_file_was_set_aside(tmp_path):
    pytest.importorskip("gradio")
    from app.page.studio import StudioUI
    from fake_engine import FakeEngine

    path = tmp_path / "config.json"
    ui = StudioUI(FakeEngine(tmp_path), settings=Settings(path), styles=StyleDatabase(tmp_path / "styles.csv"))
    path.write_text("{oops")
    with pytest.warns(UserWarning, match=r"config\.json\.bad-"):  # gr.Warning outside an event: a Python warning
        message = ui.styles_settings.apply_settings(["default_steps"], [12])
    kept = bad_files(tmp_path, "config.json")
    assert len(kept) == 1 and kept[0].read_text() == "{oops" and kept[0].name in message
    assert json.loads(path.read_text()) == {"default_steps": 12}


def test_options_route_warns_and_keeps_the_file(serve, tmp_path):
    path = tmp_path / "config.json"
    path.write_bytes(b'{"sd_model_checkpoint": "x.safetensors"')
    server = serve(options_path=path)
    answer = server.post("/sdapi/v1/options", {"CLIP_stop_at_last_layers": 2})
    assert answer.status_code == 200, answer.text
    kept = bad_files(tmp_path, "config.json")
    assert len(kept) == 1 and kept[0].read_bytes() == b'{"sd_model_checkpoint": "x.safetensors"'
    assert answer.headers["Warning"].startswith('199 - "') and kept[0].name in answer.headers["Warning"]
    assert kept[0].name in server.get("/sdapi/v1/options").headers["Warning"]
    assert json.loads(path.read_text()) == {"CLIP_stop_at_last_layers": 2}


# ---------------------------------------------------------------- styles.csv


STYLES = 'name,prompt,negative_prompt\nPhoto,"{prompt}, photo",drawing\nCaf\xe9 noir,"{prompt}, noir",\n'


def test_styles_with_a_cp1252_byte_are_all_read_and_kept_on_save(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes(STYLES.encode("cp1252"))  # "é" as the single byte 0xE9
    db = StyleDatabase(path)
    assert db.names() == ["Photo", "Café noir"]
    assert "cp1252" in db.warning

    db.save_style("New", "{prompt}, new", "")
    assert db.warning is None
    again = StyleDatabase(path)
    assert again.names() == ["Photo", "Café noir", "New"] and again.warning is None  # now UTF-8
    assert again.get("Café noir").prompt == "{prompt}, noir"


def test_saving_a_style_keeps_rows_added_by_hand_since_the_page_read_the_file(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_text(STYLES, encoding="utf-8")
    db = StyleDatabase(path)
    with path.open("a", encoding="utf-8") as f:
        f.write("By hand,\"{prompt}, by hand\",\n")
    db.save_style("New", "x", "")
    db.delete_style("Photo")
    assert StyleDatabase(path).names() == ["Café noir", "By hand", "New"]


def test_an_unreadable_styles_file_is_never_written_over(tmp_path):
    path = tmp_path / "styles.csv"
    content = ('name,prompt,negative_prompt\nHuge,"' + "x" * 200_000 + '",\nSmall,tiny,\n').encode()
    path.write_bytes(content)  # a field over the csv module's limit: csv.Error
    db = StyleDatabase(path)
    assert db.warning and "not readable" in db.warning
    with pytest.raises(StyleError, match=r"nothing was saved over it.*styles\.csv\.bad-"):
        db.save_style("New", "x", "")
    kept = bad_files(tmp_path, "styles.csv")
    assert len(kept) == 1 and kept[0].read_bytes() == content and not path.exists()
    db.save_style("New", "x", "")  # the user saves again: a new file, the old one still aside
    assert StyleDatabase(path).names() == ["New"] and kept[0].read_bytes() == content


# ---------------------------------------------------------------- prompt history


def load_history_store():
    from test_history import load

    return load("store")


KILLED_WRITER = r'''
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("history_store", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
store = module.HistoryStore(sys.argv[2])
store.begin_entry({"prompt": sys.argv[3], "kind": "txt2img", "params": {}},
                  [{"seed": 1, "path": None, "infotext": "", "created": 1.0}])
print("begun", flush=True)
if sys.argv[4] == "die":
    os._exit(9)  # the server killed mid-job: no finish_entry, no clean-up
sys.stdin.read()  # a live server: keeps its store open until told to stop
'''


def start_history_writer(tmp_path: Path, db: Path, prompt: str, how: str) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER)
    store_file = ROOT / "extensions" / "prompt_history" / "store.py"
    proc = subprocess.Popen([sys.executable, str(script), str(store_file), str(db), prompt, how],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "begun"
    return proc


def statuses(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute("SELECT prompt, status FROM entries"))
    finally:
        conn.close()


def test_jobs_killed_with_the_server_are_marked_interrupted_at_the_next_start(tmp_path):
    history = load_history_store()
    db = tmp_path / "outputs" / "history.sqlite3"
    killed = start_history_writer(tmp_path, db, "killed mid-job", "die")
    assert killed.wait(30) == 9
    assert statuses(db) == {"killed mid-job": "running"}

    store = history.HistoryStore(db)  # the next start
    assert store.abandoned == 1
    assert statuses(db) == {"killed mid-job": "interrupted"}
    assert store.search("killed")["entries"][0]["status"] == "interrupted"
    store.close()


def test_a_job_of_another_live_process_is_left_running(tmp_path):
    history = load_history_store()
    db = tmp_path / "outputs" / "history.sqlite3"
    live = start_history_writer(tmp_path, db, "still working", "live")
    try:
        store = history.HistoryStore(db)
        assert store.abandoned == 0 and statuses(db) == {"still working": "running"}
        store.close()
    finally:
        live.stdin.close()
        assert live.wait(30) == 0
    reopened = history.HistoryStore(db)  # that process has ended without finishing its entry
    assert reopened.abandoned == 1 and statuses(db) == {"still working": "interrupted"}
    reopened.close()


# ---------------------------------------------------------------- an output folder that cannot take the image


def decode(b64: str):
    import base64
    import io

    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


TXT2IMG = {"prompt": "a red circle", "seed": 1234, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
           "send_images": True, "save_images": True}


def blocked_folder(tmp_path: Path) -> Path:
    """An output folder no one can create, root included: its parent is a file."""
    parent = tmp_path / "not-a-folder"
    parent.write_bytes(b"a file where the output folder's parent should be")
    return parent / "images"


def test_api_returns_the_image_when_the_output_folder_cannot_be_written(engine, serve, tmp_path, monkeypatch):
    import numpy as np

    server = serve()
    monkeypatch.setattr(engine, "output_dir", blocked_folder(tmp_path))
    answer = server.post("/sdapi/v1/txt2img", TXT2IMG)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    info = json.loads(body["info"])
    assert info["save_error"]["status"] == 507 and info["save_error"]["images"] == [0]
    assert "not saved in" in info["warnings"][0] and "only in this response" in info["warnings"][0]
    assert info["save_error"]["message"] == info["warnings"][0]
    (returned,) = [decode(b) for b in body["images"]]

    # the same job where the folder works: the returned pixels are the picture it saves
    good = tmp_path / "good"
    monkeypatch.setattr(engine, "output_dir", good)
    again = server.post("/sdapi/v1/txt2img", TXT2IMG)
    assert again.status_code == 200 and "save_error" not in json.loads(again.json()["info"])
    (saved_file,) = list(good.rglob("*.png"))
    from PIL import Image

    with Image.open(saved_file) as saved:
        assert np.array_equal(np.asarray(returned), np.asarray(saved.convert("RGB")))
    assert np.asarray(returned).std() > 0  # a picture, not a blank


def test_a_full_disk_still_returns_the_images_even_without_send_images(engine, serve, tmp_path, monkeypatch):
    import core.engine

    server = serve()
    monkeypatch.setattr(engine, "output_dir", tmp_path / "outputs")

    def full_disk(image, directory, seed, infotext):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(core.engine, "save_png", full_disk)
    answer = server.post("/sdapi/v1/txt2img", {**TXT2IMG, "send_images": False, "batch_size": 2})
    assert answer.status_code == 200, answer.text
    info = json.loads(answer.json()["info"])
    assert info["save_error"]["images"] == [0, 1] and "No space left on device" in info["warnings"][0]
    assert info["warnings"][0].startswith("2 of 2 image(s) not saved in ")
    images = [decode(b) for b in answer.json()["images"]]
    assert len(images) == 2 and all(image.size == (64, 64) for image in images)
    assert not any((tmp_path / "outputs").rglob("*.png"))


def test_page_shows_the_image_and_warns_when_it_cannot_save(tmp_path):
    pytest.importorskip("gradio")
    import numpy as np
    from PIL import Image

    from app.page.studio import StudioUI
    from fake_engine import FakeEngine
    from test_webui import run_stream

    engine = FakeEngine(tmp_path)
    engine.output_dir.parent.mkdir(parents=True, exist_ok=True)
    engine.output_dir.write_bytes(b"a file where the output folder should be")
    settings = Settings(tmp_path / "config.json")
    settings.update({"image_format": "jpg"})  # the page saves, not the engine
    ui = StudioUI(engine, settings=settings, styles=StyleDatabase(tmp_path / "styles.csv"))
    with pytest.warns(UserWarning, match=r"1 of 1 image\(s\) not saved in .*only on this page"):
        *_, (gallery, info, log, progress, items) = run_stream(ui, "txt2img", dict(prompt="x", seed=3, steps=1,
                                                                                  width=64, height=64))
    (picture, caption), = gallery
    assert isinstance(picture, Image.Image)
    expected = Image.new("RGB", (64, 64), (0, 90, 160))  # what FakeEngine paints for this job
    assert np.array_equal(np.asarray(picture), np.asarray(expected))
    assert items[0]["path"] is None and items[0]["seed"] == 3 and info == items[0]["infotext"]
    assert "not saved in" in log and "saved to" not in log


def test_page_shows_an_image_the_engine_could_not_save(engine, tmp_path, monkeypatch):
    pytest.importorskip("gradio")
    import numpy as np

    from app.page.studio import StudioUI
    from test_webui import run_stream

    monkeypatch.setattr(engine, "output_dir", blocked_folder(tmp_path))
    ui = StudioUI(engine, settings=Settings(tmp_path / "config.json"), styles=StyleDatabase(tmp_path / "styles.csv"))
    with pytest.warns(UserWarning, match="not saved in"):
        *_, (gallery, info, log, progress, items) = run_stream(
            ui, "txt2img", dict(prompt="a red circle", seed=1234, steps=2, width=64, height=64, sampler="Euler"))
    (picture, _), = gallery
    assert items[0]["path"] is None and np.asarray(picture).std() > 0
    assert "Not a directory" in log or "File exists" in log


def test_the_page_says_at_load_what_it_could_not_read(tmp_path):
    gr = pytest.importorskip("gradio")
    from app.page.build import build_ui
    from fake_engine import FakeEngine

    (tmp_path / "config.json").write_text('["not", "an", "object"]')
    (tmp_path / "styles.csv").write_text('name,prompt\nHuge,"' + "x" * 200_000 + '"\n')
    demo = build_ui(FakeEngine(tmp_path), settings=Settings(tmp_path / "config.json"),
                    styles=StyleDatabase(tmp_path / "styles.csv"))
    texts = [block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown) and block.value]
    (kept,) = bad_files(tmp_path, "config.json")
    assert any(kept.name in text and "defaults are used" in text for text in texts)
    assert any("styles.csv: not readable" in text for text in texts)


def test_page_super_resolution_keeps_the_picture_when_it_cannot_save(tmp_path):
    """The Super-resolution tab's own saves: a folder that cannot take the file leaves the
    enlarged picture on the page with a warning, for a single image and in a batch."""
    pytest.importorskip("gradio")
    import numpy as np
    from PIL import Image

    from app.page.studio import StudioUI
    from fake_engine import FakeEngine

    engine = FakeEngine(tmp_path)
    ui = StudioUI(engine, settings=Settings(tmp_path / "config.json"), styles=StyleDatabase(tmp_path / "styles.csv"))
    source = tmp_path / "src.png"
    Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)).save(source)
    expected = Image.open(source).convert("RGB").resize((32, 32), Image.LANCZOS)
    blocked = ui.outputs.folder("extras")
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_bytes(b"a file where the extras folder should be")
    with pytest.warns(UserWarning, match=r"1 of 1 image\(s\) not saved in .*only on this page"):
        gallery, info, log, items = ui.superres.upscale("Single image", str(source), "", "", "Lanczos", "Scale by", 2, 0, 0)
    (picture, caption), = gallery
    assert isinstance(picture, Image.Image) and items[0]["path"] is None and "16x16 → 32x32" in caption
    assert np.abs(np.asarray(picture, dtype=int) - np.asarray(expected, dtype=int)).max() <= 1
    assert "not saved in" in log and "saved to" not in log

    batch = tmp_path / "outputs" / "batch"
    batch.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        Image.open(source).save(batch / name)
    out = tmp_path / "outputs" / "batch-out"
    out.write_bytes(b"a file where the batch's output folder should be")
    with pytest.warns(UserWarning, match=r"2 of 2 image\(s\) not saved in"):
        gallery, info, log, items = ui.superres.upscale("Batch from folder", None, str(batch), str(out), "Lanczos",
                                               "Scale by", 2, 0, 0)
    assert [item["path"] for item in items] == [None, None]
    assert all(isinstance(picture, Image.Image) and picture.size == (32, 32) for picture, _ in gallery)
    assert out.read_bytes().startswith(b"a file")  # nothing written over
