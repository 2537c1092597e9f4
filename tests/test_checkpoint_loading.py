"""Loading a checkpoint: the progress it reports, the engine's loading status, the previous
model let go on a switch, and the server's load at start (setting sd_checkpoint_load_at_start)."""
from __future__ import annotations

import gc
import json
import shutil
import weakref

import pytest

from app.settings import Settings, SettingsError
from core.engine import Engine
from core.errors import EngineError
from core.loading import load_model
from core.params import GenerationParams


@pytest.fixture
def engine(tiny_checkpoints, tmp_path):
    ckpt_dir = tmp_path / "models" / "Stable-diffusion"
    ckpt_dir.mkdir(parents=True)
    shutil.copy(tiny_checkpoints["safetensors"], ckpt_dir / "tiny.safetensors")
    shutil.copy(tiny_checkpoints["fp16"], ckpt_dir / "tiny_fp16.safetensors")
    return Engine(device="cpu", ckpt_dir=ckpt_dir, output_dir=tmp_path / "outputs", hash_cache=tmp_path / "hashes.json",
                  extensions_dir=tmp_path / "no-extensions")


@pytest.mark.parametrize("layout", ["safetensors", "fp16", "ckpt", "diffusers"])
def test_load_model_reports_rising_fractions_ending_at_one(tiny_checkpoints, layout):
    fractions: list[float] = []
    model = load_model(tiny_checkpoints[layout], progress=fractions.append)
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    # one call per tensor taken, each adding that tensor's bytes: strictly rising
    assert all(later > earlier for earlier, later in zip(fractions, fractions[1:]))
    tensors = len(model.state_dict())
    assert len(fractions) - 1 >= tensors - 10  # about one per weight (a few buffers are rebuilt, not read)


def test_load_model_progress_follows_the_bytes(tiny_checkpoints):
    """The fraction after each tensor is the share of the weights' bytes read so far: the
    steps are as large as the tensors, not one per tensor."""
    fractions: list[float] = []
    model = load_model(tiny_checkpoints["safetensors"], progress=fractions.append)
    steps = sorted(b - a for a, b in zip(fractions, fractions[1:]))
    sizes = sorted(t.numel() * t.element_size() for t in model.state_dict().values())
    total = sum(sizes)
    assert steps[-1] == pytest.approx(sizes[-1] / total, rel=1e-6)  # the largest weight's share
    assert steps[-1] > 100 * steps[0]


def test_engine_load_reports_progress_and_loading_status(engine):
    seen = []

    def progress(fraction):
        status = engine.loading
        seen.append((fraction, status.name, status.fraction, engine.loaded))

    assert engine.loading is None
    loaded = engine.load("tiny.safetensors", progress=progress)
    assert loaded.name == "tiny" and engine.loading is None
    assert seen[0][0] == 0.0 and seen[-1][0] == 1.0
    assert all(name == "tiny" and fraction == shown and before is None for fraction, name, shown, before in seen)
    # already loaded: nothing is read again
    again = []
    assert engine.load("tiny.safetensors", progress=again.append) is loaded and again == []


def test_a_failed_load_clears_the_loading_status(engine):
    (engine.ckpt_dir / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    with pytest.raises(EngineError, match="broken.safetensors"):
        engine.load("broken.safetensors")
    assert engine.loading is None and engine.loaded is None


def test_switching_checkpoints_frees_the_previous_model(engine):
    engine.load("tiny.safetensors")
    first = weakref.ref(engine.loaded.model)
    engine.txt2img(GenerationParams(prompt="a red circle", steps=2, width=64, height=64, seed=1), save=False)
    engine.load("tiny_fp16.safetensors")
    gc.collect()
    assert first() is None
    assert engine.loaded.name == "tiny_fp16"
    second = weakref.ref(engine.loaded.model)
    engine.unload()
    gc.collect()
    assert second() is None and engine.loaded is None


# ---------------------------------------------------------------------------- the setting


def test_load_at_start_setting_is_saved_and_checked(tmp_path):
    path = tmp_path / "config.json"
    settings = Settings(path)
    assert settings["sd_checkpoint_load_at_start"] is True  # the default
    assert settings.update({"sd_checkpoint_load_at_start": False}) == ["sd_checkpoint_load_at_start"]
    assert json.loads(path.read_text())["sd_checkpoint_load_at_start"] is False
    assert Settings(path)["sd_checkpoint_load_at_start"] is False
    with pytest.raises(SettingsError, match="Load the checkpoint when the server starts"):
        settings.update({"sd_checkpoint_load_at_start": "yes"})
    path.write_text(json.dumps({"sd_checkpoint_load_at_start": "often"}))
    reread = Settings(path)
    assert reread["sd_checkpoint_load_at_start"] is True
    assert any("sd_checkpoint_load_at_start" in w for w in reread.load_warnings)


def test_startup_checkpoint_follows_the_setting_and_the_saved_choice(engine, tmp_path):
    from app.server import startup_checkpoint

    config = tmp_path / "config.json"
    assert startup_checkpoint(engine, config) == "tiny.safetensors"  # no file: on, the first listed
    config.write_text(json.dumps({"sd_model_checkpoint": "tiny_fp16.safetensors"}))
    assert startup_checkpoint(engine, config) == "tiny_fp16.safetensors"  # the API's choice
    config.write_text(json.dumps({"sd_model_checkpoint": "gone.safetensors"}))
    assert startup_checkpoint(engine, config) == "tiny.safetensors"
    config.write_text(json.dumps({"sd_model_checkpoint": "tiny_fp16.safetensors", "sd_checkpoint_load_at_start": False}))
    assert startup_checkpoint(engine, config) is None
    empty = Engine(device="cpu", ckpt_dir=tmp_path / "empty", output_dir=tmp_path / "out", extensions_dir=tmp_path / "none")
    empty.demo_checkpoint = tmp_path / "no-demo.safetensors"
    assert empty.list_checkpoints() == []
    assert startup_checkpoint(empty, tmp_path / "missing.json") is None  # nothing to load


def test_server_loads_the_checkpoint_at_start_without_a_job(engine, tmp_path):
    from fastapi.testclient import TestClient

    from app.server import create_app

    app = create_app(engine, api=True, ui=False, options_path=tmp_path / "config.json",
                     load_checkpoint="tiny_fp16.safetensors")
    assert engine.loaded is None  # nothing happens before the server starts
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a Host the server answers to
        app.state.preload.join(timeout=120)
        assert engine.loaded is not None and engine.loaded.name == "tiny_fp16"
        assert engine.loaded.hash is not None  # the first job's infotext needs it: done too
        options = client.get("/sdapi/v1/options").json()
        assert options["sd_model_checkpoint"].startswith("tiny_fp16")


def test_server_without_load_at_start_loads_nothing(engine, tmp_path):
    from fastapi.testclient import TestClient

    from app.server import create_app

    app = create_app(engine, api=True, ui=False, options_path=tmp_path / "config.json")
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a Host the server answers to
        assert client.get("/sdapi/v1/progress").status_code == 200
        assert app.state.preload is None and engine.loaded is None


def test_a_failing_load_at_start_leaves_the_server_up(engine, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from app.server import create_app

    (engine.ckpt_dir / "broken.safetensors").write_bytes(b"\x00" * 4)
    app = create_app(engine, api=True, ui=False, options_path=tmp_path / "config.json",
                     load_checkpoint="broken.safetensors")
    with TestClient(app, base_url="http://127.0.0.1") as client:  # a Host the server answers to
        app.state.preload.join(timeout=60)
        assert engine.loaded is None and engine.loading is None
        assert client.get("/sdapi/v1/progress").status_code == 200
    assert "Loading checkpoint broken.safetensors failed: broken.safetensors: not a safetensors file" in capsys.readouterr().out
