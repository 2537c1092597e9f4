"""The hook API: order, isolation of a failing extension, and the documented example."""
import shutil
from pathlib import Path

import numpy as np

from core.engine import Engine
from core.params import GenerationParams

ROOT = Path(__file__).resolve().parent.parent


def make_engine(tiny_checkpoints, tmp_path, extensions_dir, **kwargs):
    return Engine(device="cpu", ckpt_dir=tiny_checkpoints["safetensors"].parent, output_dir=tmp_path / "out",
                  hash_cache=tmp_path / "h.json", extensions_dir=extensions_dir, **kwargs)


def params(**kwargs):
    return GenerationParams(**{**dict(prompt="a cat", steps=2, width=64, height=64, seed=1, checkpoint="tiny.safetensors"), **kwargs})


def test_hooks_run_in_order(tiny_checkpoints, tmp_path):
    engine = make_engine(tiny_checkpoints, tmp_path, tmp_path / "none")
    calls = []

    def setup(api):
        api.on("before_model_load", lambda path: calls.append(("before_model_load", Path(path).name)))
        api.on("after_model_load", lambda loaded: calls.append(("after_model_load", loaded.name)))
        api.on_extra_network("style", lambda job, tags: calls.append(("style", [t.name for t in tags])) or {"Style": "x"})
        api.on("before_sampling", lambda job: calls.append(("before_sampling", job.kind)))
        api.on("after_image_saved", lambda job, result: calls.append(("after_image_saved", result.seed)))
        api.on("after_job", lambda job, results: calls.append(("after_job", len(results))))

    engine.extensions.add("recorder", setup)
    results = engine.txt2img(params(prompt="a cat <style:ink>", batch_size=2), save=False)
    assert calls == [
        ("before_model_load", "tiny.safetensors"), ("after_model_load", "tiny"), ("style", ["ink"]),
        ("before_sampling", "txt2img"), ("after_image_saved", 1), ("after_image_saved", 2), ("after_job", 2),
    ]
    assert "Style: x" in results[0].infotext
    calls.clear()
    engine.txt2img(params(), save=False)  # no tag: the handler still runs, with no tags
    assert ("style", []) in calls


def test_a_raising_extension_is_disabled_and_generation_goes_on(tiny_checkpoints, tmp_path, caplog):
    ext_dir = tmp_path / "exts"
    (ext_dir / "broken").mkdir(parents=True)
    (ext_dir / "broken" / "extension.py").write_text(
        "def setup(api):\n    api.on('before_sampling', lambda job: 1 / 0)\n")
    (ext_dir / "bad-import").mkdir()
    (ext_dir / "bad-import" / "extension.py").write_text("import no_such_module_anywhere\n")
    engine = make_engine(tiny_checkpoints, tmp_path, ext_dir)
    assert not engine.extensions.extensions["bad-import"].enabled
    assert "ModuleNotFoundError" in engine.extensions.extensions["bad-import"].error
    plain = make_engine(tiny_checkpoints, tmp_path, tmp_path / "none").txt2img(params(), save=False)[0]
    result = engine.txt2img(params(), save=False)[0]
    assert np.array_equal(np.asarray(result.image), np.asarray(plain.image))
    broken = engine.extensions.extensions["broken"]
    assert not broken.enabled and "ZeroDivisionError" in broken.error
    assert "extension broken failed" in caplog.text
    engine.txt2img(params(), save=False)  # still fine afterwards


def test_disabled_extensions_are_not_loaded(tiny_checkpoints, tmp_path):
    ext_dir = tmp_path / "exts"
    shutil.copytree(ROOT / "docs" / "examples" / "captions", ext_dir / "captions")
    engine = make_engine(tiny_checkpoints, tmp_path, ext_dir, disabled_extensions={"captions"})
    assert not engine.extensions.extensions["captions"].enabled
    assert "caption" not in engine.extensions.extra_networks


def test_documented_example_extension(tiny_checkpoints, tmp_path):
    example = ROOT / "docs" / "examples" / "captions" / "extension.py"
    assert len(example.read_text().splitlines()) < 40
    assert example.read_text().split('"""', 2)[2].strip() in (ROOT / "docs" / "EXTENSIONS.md").read_text()
    ext_dir = tmp_path / "exts"
    shutil.copytree(example.parent, ext_dir / "captions")
    engine = make_engine(tiny_checkpoints, tmp_path, ext_dir)
    (result,) = engine.txt2img(params(prompt="a cat <caption:my cat: Tom>"))
    assert result.path.with_suffix(".txt").read_text() == "my cat: Tom\n"
    assert 'Caption: "my cat: Tom"' in result.infotext
    (plain,) = engine.txt2img(params(prompt="a dog"))
    assert not plain.path.with_suffix(".txt").exists()
    assert engine.extensions.extensions["captions"].settings == {"captions_enabled": (True, "Write caption files")}


def test_unknown_hook_name_is_refused(tiny_checkpoints, tmp_path):
    engine = make_engine(tiny_checkpoints, tmp_path, tmp_path / "none")
    ext = engine.extensions.add("typo", lambda api: api.on("before_samplig", print))
    assert not ext.enabled and "unknown hook 'before_samplig'" in ext.error
