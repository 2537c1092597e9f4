"""The engine protocol (core/engine_protocol.py) against both its implementations: the real
core.engine.Engine (built on an empty folder, no model loaded) and the tests' FakeEngine. A
member either one lacks, an attribute of another type, or a method whose parameters differ in
name, kind or being optional fails here, instead of coming back as a probe in app/."""
from __future__ import annotations

import inspect
import typing
from pathlib import Path

import pytest

from core.engine_protocol import EngineProtocol, protocol_members
from fake_engine import Call, FakeEngine

ATTRIBUTES, METHODS = protocol_members()


def attribute_types() -> dict[str, object]:
    """The protocol's attribute annotations, resolved (they name core types only for typing)."""
    from core.engine import JobFlags, LoadedModel, Loading
    from core.extensions import ExtensionRegistry
    from core.hashing import HashCache

    names = dict(Path=Path, JobFlags=JobFlags, LoadedModel=LoadedModel, Loading=Loading,
                 ExtensionRegistry=ExtensionRegistry, HashCache=HashCache)
    return typing.get_type_hints(EngineProtocol, localns=names)


def parameters(function) -> list[tuple[str, object, bool]]:
    """(name, kind, optional) of each parameter after self."""
    listed = list(inspect.signature(function).parameters.values())
    if listed and listed[0].name == "self":
        listed = listed[1:]
    return [(p.name, p.kind, p.default is not inspect.Parameter.empty) for p in listed]


def protocol_problems(engine) -> list[str]:
    """What ``engine`` lacks or has otherwise than EngineProtocol says, one line each."""
    problems = []
    for name, wanted in attribute_types().items():
        if not hasattr(engine, name):
            problems.append(f"no attribute {name}")
        elif not isinstance(getattr(engine, name), typing.get_args(wanted) or wanted):  # a union: any of its types
            problems.append(f"{name} is a {type(getattr(engine, name)).__name__}, not {wanted}")
    for name in METHODS:
        method = getattr(type(engine), name, None)
        if not callable(method):
            problems.append(f"no method {name}")
        elif parameters(method) != parameters(getattr(EngineProtocol, name)):
            problems.append(f"{name}{inspect.signature(method)} differs from the protocol's "
                            f"{name}{inspect.signature(getattr(EngineProtocol, name))}")
    return problems


@pytest.fixture(scope="module")
def real_engine(tmp_path_factory):
    from core.engine import Engine

    root = tmp_path_factory.mktemp("protocol-real")
    (root / "no-extensions").mkdir()
    return Engine(device="cpu", ckpt_dir=root / "models" / "Stable-diffusion", output_dir=root / "outputs",
                  hash_cache=root / "hashes.json", models_dir=root / "models", extensions_dir=root / "no-extensions")


def test_the_protocol_lists_what_the_app_uses():
    assert {"output_dir", "ckpt_dir", "models_dir", "lora_dir", "embeddings_dir", "loaded", "loading", "flags",
            "prediction", "zero_terminal_snr", "hashes", "extensions"} <= set(ATTRIBUTES)
    assert {"txt2img", "img2img", "sd_upscale", "extras", "load", "unload", "job_model", "resolve_checkpoint",
            "list_checkpoints", "default_size", "generation_defaults", "model_hash", "exclusive", "interrupt", "skip"} <= set(METHODS)


def test_the_real_engine_keeps_to_the_protocol(real_engine):
    assert protocol_problems(real_engine) == []


def test_the_fake_engine_keeps_to_the_protocol(tmp_path):
    engine = FakeEngine(tmp_path)
    assert protocol_problems(engine) == []
    engine.load("sd15.safetensors")  # the loaded model is the engine's type too
    assert protocol_problems(engine) == []


def test_drift_from_the_protocol_is_caught(tmp_path):
    class RenamedParameter(FakeEngine):
        def load(self, name, allow_path=False, *, prediction=None, zero_terminal_snr=None, progress=None):
            return super().load(name, allow_path)

    class RequiredParameter(FakeEngine):
        def skip(self, now) -> None:
            self.flags.skipped = now

    (renamed,) = protocol_problems(RenamedParameter(tmp_path))
    assert renamed.startswith("load(self, name, allow_path=False")
    (required,) = protocol_problems(RequiredParameter(tmp_path))
    assert required.startswith("skip(self, now)")
    missing = FakeEngine(tmp_path)
    del missing.flags
    missing.prediction = None
    assert protocol_problems(missing) == ["prediction is a NoneType, not <class 'str'>", "no attribute flags"]


# --- the fake's own behaviour, which the app's tests rely on ------------------------------------


def test_the_fake_paints_records_and_saves_as_the_engine_does(tmp_path):
    from PIL import Image

    from core.params import GenerationParams

    engine = FakeEngine(tmp_path, steps_delay=0)
    params = GenerationParams(prompt="a cat", steps=2, width=64, height=32, seed=5, batch_size=2)
    seen = []
    first, second = engine.txt2img(params, progress=seen.append)
    assert engine.calls == [Call("txt2img", params, save=True)]
    assert [p.step for p in seen] == [1, 2] and seen[-1].fraction == 1.0
    assert (first.seed, second.seed) == (5, 6) and first.image.size == (64, 32)
    assert second.image.getpixel((0, 0)) == (40, 90, 160)  # the colour tells the place in the batch
    assert first.path.name == "00000-5.png" and first.path.parent.parent == engine.output_dir / "txt2img-images"
    with Image.open(first.path) as saved:
        assert saved.info["parameters"] == first.infotext and "Seed: 5," in first.infotext
    assert engine.loaded.name == "sd15" and engine.model_hash() in first.infotext


def test_the_fake_fails_on_demand_and_stops_when_interrupted(tmp_path):
    from core.errors import EngineError
    from core.params import GenerationParams

    params = GenerationParams(prompt="x", steps=3, width=64, height=64, batch_count=3)
    engine = FakeEngine(tmp_path, fail=EngineError("broken", "checkpoint"), steps_delay=0)
    with pytest.raises(EngineError, match="checkpoint: broken"):
        engine.txt2img(params, save=False)
    engine.fail = None

    def interrupt_in_the_second_batch(progress):
        if progress.batch == 1:
            engine.interrupt()

    results = engine.txt2img(params, progress=interrupt_in_the_second_batch, save=False)
    assert len(results) == 1 and results[0].path is None and engine.interrupts == 1
    with pytest.raises(EngineError, match="'gone.ckpt' not found"):
        engine.load("gone.ckpt")
