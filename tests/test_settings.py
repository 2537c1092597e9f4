"""One settings registry and one store (app/settings.py) for the page's Settings tab and
/sdapi/v1/options (issue #15): neither writes back a value the other changed, the page shows
what is saved, an A1111 client can send back every option it read, and A1111's settings that
this server does not use are kept.

The page is driven through the functions its events call, with the values its components
hold, as a browser would send them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.server import create_app
from app.settings import MAX_KEPT_KEYS, OPTIONS, Settings
from launch_args import launch_args
from test_api import LIMITS, LiveServer, engine, models_dir, serve, tiny  # noqa: F401 - fixtures: tiny models

gr = pytest.importorskip("gradio")

API = "/sdapi/v1"


@pytest.fixture
def fresh_engine(models_dir, tmp_path, monkeypatch):
    """An engine of its own (these tests change what it thinks checkpoints predict); the data
    folder is the test's, where config.json is too."""
    from core.engine import Engine

    monkeypatch.setenv("SD_STUDIO_DATA_DIR", str(tmp_path))

    def make(root: Path):
        (root / "no-extensions").mkdir(parents=True, exist_ok=True)
        return Engine(device="cpu", ckpt_dir=models_dir / "Stable-diffusion", output_dir=root / "images",
                      hash_cache=root / "hashes.json", models_dir=models_dir, extensions_dir=root / "no-extensions")

    return make


def local_client(app):
    from fastapi.testclient import TestClient

    return TestClient(app, base_url="http://127.0.0.1")  # a Host the server answers to


class Page:
    """A browser's view of a built page: the values its components show, and its events."""

    def __init__(self, demo):
        self.demo = demo
        self.settings = demo.studio_settings_components
        self.shown = {block._id: getattr(block, "value", None) for block in demo.blocks.values()}

    def value(self, key: str):
        return self.shown[self.settings[key]._id]

    def load(self) -> None:
        """What a (re)load of the page puts into the Settings tab."""
        ids = {c._id for c in self.settings.values()}
        for fn in self.demo.fns.values():
            if any(event == "load" for _, event in fn.targets) and fn.fn and ids & {o._id for o in fn.outputs}:
                self._show(fn, fn.fn(*[self.shown[i._id] for i in fn.inputs]))

    def apply(self, **edits) -> str:
        """Edit settings in the tab, then press Apply settings; returns the status line."""
        for key, value in edits.items():
            self.shown[self.settings[key]._id] = value
        button = next(b for b in self.demo.blocks.values() if getattr(b, "elem_id", None) == "settings_apply")
        fn = next(f for f in self.demo.fns.values() if (button._id, "click") in f.targets)
        result = fn.fn(*[self.shown[i._id] for i in fn.inputs])
        self._show(fn, result)
        return result[0] if isinstance(result, (list, tuple)) else result

    def _show(self, fn, result) -> None:
        result = list(result) if isinstance(result, (list, tuple)) else [result]
        for block, value in zip(fn.outputs, result):
            self.shown[block._id] = value


def stored(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------- the lost updates of issue #15


def test_an_api_change_survives_the_page_applying_another_setting(fresh_engine, tmp_path):
    engine = fresh_engine(tmp_path)
    config = tmp_path / "config.json"
    app = create_app(engine, api=True, ui=True, options_path=config, allowed_paths=[tmp_path / "images"])
    page = Page(app.state.page)  # opened before the API's change: it shows "auto"
    assert page.value("sd_model_prediction") == "auto"
    with local_client(app) as client:
        assert client.post(f"{API}/options", json={"sd_model_prediction": "v"}).status_code == 200
        assert engine.prediction == "v"

        page.apply(jpeg_quality=80)
        assert stored(config)["sd_model_prediction"] == "v" and stored(config)["jpeg_quality"] == 80
        assert engine.prediction == "v"  # not pushed back to "auto"
        assert client.get(f"{API}/options").json()["sd_model_prediction"] == "v"
        assert page.value("sd_model_prediction") == "v"  # after Apply the tab shows what is saved


def test_the_settings_tab_shows_the_saved_values_after_a_reload(fresh_engine, tmp_path):
    config = tmp_path / "config.json"
    app = create_app(fresh_engine(tmp_path), api=False, ui=True, options_path=config,
                     allowed_paths=[tmp_path / "images"])
    page = Page(app.state.page)
    assert (page.value("default_steps"), page.value("preview_every")) == (20, 5)
    assert "Saved 2 setting(s)" in page.apply(default_steps=25, preview_every=2)

    reloaded = Page(app.state.page)  # the browser loads the same page again
    reloaded.load()
    assert (reloaded.value("default_steps"), reloaded.value("preview_every")) == (25, 2)
    reloaded.apply(jpeg_quality=70)
    assert (stored(config)["default_steps"], stored(config)["preview_every"], stored(config)["jpeg_quality"]) == (
        25, 2, 70)

    # a page built anew over the file (the next start) shows them as well
    again = create_app(fresh_engine(tmp_path / "again"), api=False, ui=True, options_path=config,
                       allowed_paths=[tmp_path / "images"])
    rebuilt = Page(again.state.page)
    assert (rebuilt.value("default_steps"), rebuilt.value("preview_every"), rebuilt.value("jpeg_quality")) == (
        25, 2, 70)


def test_page_and_api_writing_in_turn_both_see_both(fresh_engine, tmp_path):
    config = tmp_path / "config.json"
    app = create_app(fresh_engine(tmp_path), api=True, ui=True, options_path=config,
                     allowed_paths=[tmp_path / "images"])
    page = Page(app.state.page)
    with local_client(app) as client:
        changed = {"CLIP_stop_at_last_layers": 2, "sd_noise_schedule": "Zero Terminal SNR"}
        assert client.post(f"{API}/options", json=changed).status_code == 200
        page.apply(default_steps=30)
        assert client.get(f"{API}/options").json()["sd_noise_schedule"] == "Zero Terminal SNR"
        assert stored(config)["sd_noise_schedule"] == "Zero Terminal SNR" and stored(config)["default_steps"] == 30
        assert client.post(f"{API}/options", json={"emphasis": "No norm", "jpeg_quality": 60}).status_code == 200
        page.apply(preview_every=3)

        options = client.get(f"{API}/options").json()
        assert (options["CLIP_stop_at_last_layers"], options["sd_noise_schedule"], options["emphasis"],
                options["jpeg_quality"]) == (2, "Zero Terminal SNR", "No norm", 60)
        page.load()
        assert (page.value("default_steps"), page.value("preview_every"), page.value("jpeg_quality"),
                page.value("sd_noise_schedule")) == (30, 3, 60, "Zero Terminal SNR")
        assert app.state.page.studio.styles_settings.page_defaults()["steps"] == 30
    assert stored(config) == {"CLIP_stop_at_last_layers": 2, "default_steps": 30, "emphasis": "No norm",
                              "jpeg_quality": 60, "preview_every": 3, "sd_noise_schedule": "Zero Terminal SNR"}


def test_two_stores_over_one_file_keep_each_others_keys(tmp_path):
    """As two servers (two processes) over one config.json: each write re-reads the file."""
    config = tmp_path / "config.json"
    first, second = Settings(config), Settings(config)
    first.update({"default_steps": 31})
    second.update({"CLIP_stop_at_last_layers": 4, "send_size": False})
    first.update({"jpeg_quality": 55})
    assert stored(config) == {"default_steps": 31, "CLIP_stop_at_last_layers": 4, "send_size": False,
                              "jpeg_quality": 55}
    for reader in (first, second):
        assert (reader["default_steps"], reader["CLIP_stop_at_last_layers"], reader["jpeg_quality"]) == (31, 4, 55)
        assert reader.kept() == {"send_size": False}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temporary file left


# ---------------------------------------------------------------- A1111 clients


def test_webuiapi_sends_every_option_back_and_nothing_changes(serve, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"outdir": "kept by the page", "default_steps": 26}))
    server = serve(options_path=config)
    api = server.client()
    assert api.txt2img(prompt="x", seed=1, width=64, height=64, steps=2).images  # loaded and hashed
    assert api.set_options({"CLIP_stop_at_last_layers": 2, "send_seed": False}) is None
    before, file_before = api.get_options(), config.read_bytes()
    assert before["sd_checkpoint_hash"] and before["send_seed"] is False

    assert api.set_options(api.get_options()) is None
    assert api.get_options() == before and config.read_bytes() == file_before

    edited = api.get_options()
    edited["CLIP_stop_at_last_layers"] = 3
    assert api.set_options(edited) is None
    assert stored(config) == {**json.loads(file_before), "CLIP_stop_at_last_layers": 3}

    edited["sd_checkpoint_hash"] = "0" * 64
    refused = server.post(f"{API}/options", edited)
    assert 400 <= refused.status_code < 500 and "sd_checkpoint_hash" in refused.json()["errors"]
    assert api.get_options()["sd_checkpoint_hash"] == before["sd_checkpoint_hash"]
    assert server.post(f"{API}/options", {"sd_checkpoint_hash": None}).status_code == 200  # not known to the client


def test_a1111_settings_this_server_does_not_use_are_kept_and_returned(serve, tmp_path):
    config = tmp_path / "config.json"
    server = serve(options_path=config)
    a1111 = {"send_size": False, "quicksettings_list": ["sd_model_checkpoint", "CLIP_stop_at_last_layers"],
             "img2img_color_correction": True}
    answer = server.post(f"{API}/options", a1111)
    assert answer.status_code == 200, answer.text
    assert {k: server.get(f"{API}/options").json()[k] for k in a1111} == a1111
    assert stored(config) == a1111
    server.__exit__(None, None, None)
    restarted = serve(options_path=config)
    assert {k: restarted.get(f"{API}/options").json()[k] for k in a1111} == a1111

    # bounded: a huge value, too many keys, and the page's own settings are refused by name
    huge = restarted.post(f"{API}/options", {"huge_list": list(range(10_000))})
    assert huge.status_code == 422 and "huge_list" in huge.json()["errors"]
    many = restarted.post(f"{API}/options", {f"extra_{i}": i for i in range(MAX_KEPT_KEYS)})
    assert 400 <= many.status_code < 500
    outdir = restarted.post(f"{API}/options", {"outdir": "/"})
    assert outdir.status_code == 422 and "outdir" in outdir.json()["errors"]
    assert stored(config) == a1111


def test_the_api_options_model_comes_from_the_registry(serve):
    server = serve()
    schema = server.get("/openapi.json").json()["components"]["schemas"]["Options"]
    assert set(schema["properties"]) == {o.key for o in OPTIONS if o.api}
    assert schema["properties"]["jpeg_quality"]["default"] == 90
    assert "sd_model_prediction" in schema["properties"] and "outdir" not in schema["properties"]


# ---------------------------------------------------------------- --ui-settings-file


def test_ui_settings_file_reaches_the_page(models_dir, tmp_path, monkeypatch):
    import app.server as server

    monkeypatch.setenv("SD_STUDIO_DATA_DIR", str(tmp_path / "elsewhere"))
    config = tmp_path / "chosen.json"
    config.write_text(json.dumps({"default_steps": 27, "CLIP_stop_at_last_layers": 2,
                                  "sd_checkpoint_load_at_start": False}))
    served = []
    monkeypatch.setattr(server, "run_uvicorn", lambda app, host, port: served.append(app) or 0)
    args = launch_args(device="cpu", precision="fp32", ckpt_dir=models_dir / "Stable-diffusion",
                       outdir=tmp_path / "out", port=7911, api=True, ui_settings_file=config)
    assert server.serve(args) == 0
    (app,) = served
    studio = app.state.page.studio
    assert studio.settings.path == config and studio.settings is app.state.sdapi.options
    assert studio.styles_settings.page_defaults()["steps"] == 27
    assert Page(app.state.page).value("default_steps") == 27
    with local_client(app) as client:
        assert client.get(f"{API}/options").json()["CLIP_stop_at_last_layers"] == 2
    assert not (tmp_path / "elsewhere" / "config.json").exists()
