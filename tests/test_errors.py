"""EngineError carries its field and kind: the API and the page answer it without reading its text."""
from __future__ import annotations

import pytest

from core.errors import INVALID, KINDS, NOT_FOUND, TOO_LARGE, UNAVAILABLE, EngineError
from core.params import MAX_PROMPT_BYTES, GenerationParams


def failure(**changes) -> EngineError:
    with pytest.raises(EngineError) as info:
        GenerationParams(**changes).validate()
    return info.value


@pytest.mark.parametrize("changes, field, kind, message", [
    ({"steps": 0}, "steps", INVALID, "steps: must be between 1 and 500, got 0"),
    ({"width": 12}, "width", INVALID, "width: must be a multiple of 8 between 8 and 8192, got 12"),
    ({"batch_size": 64, "width": 8192, "height": 8192}, "batch_size", TOO_LARGE, "batch_size: 64 pictures of 8192x8192"),
    ({"prompt": "x" * (MAX_PROMPT_BYTES + 1)}, "prompt", TOO_LARGE, "prompt: 65537 bytes long, over the limit"),
    ({"sampler": "Nope"}, "sampler", NOT_FOUND, "sampler: unknown 'Nope' (known: "),
    ({"scheduler": "Wavy"}, "scheduler", NOT_FOUND, "schedule type: unknown 'Wavy' (known: "),
    ({"enable_hr": True, "hr_sampler_name": "Nope"}, "hr_sampler_name", NOT_FOUND, "hr_sampler_name: unknown 'Nope' (known: "),
    ({"enable_hr": True, "hr_scheduler": "Wavy"}, "hr_scheduler", NOT_FOUND, "hr_scheduler: unknown 'Wavy' (known: "),
    ({"enable_hr": True, "hr_scale": 8, "width": 2048}, "hr_scale", TOO_LARGE, "hr_scale: the hires size 16384x4096"),
])
def test_validation_errors_name_their_field_and_kind(changes, field, kind, message):
    error = failure(**changes)
    assert (error.field, error.kind) == (field, kind)
    assert str(error).startswith(message), str(error)
    assert str(error).endswith(error.reason)  # the message is the label and the reason, nothing else


def test_lookups_are_not_found_and_keep_their_field(tmp_path):
    from core.modelfiles import name_in_folder
    from core.upscaling import find_upscaler

    with pytest.raises(EngineError) as unknown:
        find_upscaler("NoSuchModel", tmp_path)
    assert (unknown.value.field, unknown.value.kind) == ("upscaler", NOT_FOUND)
    assert str(unknown.value).startswith("upscaler: unknown upscaler 'NoSuchModel'")
    with pytest.raises(EngineError) as empty:
        find_upscaler("", tmp_path)
    assert (empty.value.field, empty.value.kind) == ("upscaler", INVALID)
    with pytest.raises(EngineError) as outside:
        name_in_folder(tmp_path, "../secret.safetensors", "sd_model_checkpoint", "checkpoint folder")
    assert (outside.value.field, outside.value.kind) == ("sd_model_checkpoint", NOT_FOUND)
    assert str(outside.value) == "sd_model_checkpoint: '../secret.safetensors' is outside the checkpoint folder"


def test_loading_errors_name_the_file_and_are_no_field(tmp_path):
    from core.loading import read_checkpoint

    with pytest.raises(EngineError) as missing:
        read_checkpoint(tmp_path / "gone.safetensors")
    assert missing.value.kind == NOT_FOUND and missing.value.field is None
    assert str(missing.value) == f"{tmp_path / 'gone.safetensors'}: no such file or folder"
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x04\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(EngineError) as corrupt:
        read_checkpoint(broken)
    assert corrupt.value.kind == INVALID and corrupt.value.field is None
    assert str(corrupt.value).startswith("broken.safetensors: ")


def test_an_unknown_kind_is_a_programming_error():
    assert set(KINDS) == {INVALID, NOT_FOUND, TOO_LARGE, UNAVAILABLE}
    with pytest.raises(ValueError, match="kind"):
        EngineError("bad", "steps", kind="bogus")


def test_a_renamed_error_keeps_its_reason_and_kind():
    error = EngineError("unknown 'x' (known: a)", "scheduler", NOT_FOUND, label="schedule type")
    assert str(error) == "schedule type: unknown 'x' (known: a)"
    renamed = error.renamed("hr_scheduler")
    assert str(renamed) == "hr_scheduler: unknown 'x' (known: a)" and renamed.kind == NOT_FOUND


# --- the REST API: status by kind, the request's field names by field -----------------------------------------


@pytest.mark.parametrize("error, status, field, expected_status, expected", [
    (EngineError("unknown 'Nope' (known: Euler)", "sampler", NOT_FOUND), 422, None, 404,
     "sampler_name: unknown 'Nope' (known: Euler)"),
    (EngineError("must be between 1 and 500, got 0", "steps"), 422, None, 422, "steps: must be between 1 and 500, got 0"),
    (EngineError("must be between 1 and 12, got 99", "clip_skip"), 422, None, 422,
     "CLIP_stop_at_last_layers: must be between 1 and 12, got 99"),
    (EngineError("64 pictures of 8192x8192 are too many", "batch_size", TOO_LARGE), 422, None, 422,
     "batch_size: 64 pictures of 8192x8192 are too many"),
    (EngineError("needs a pixel upscaler, none is available", "hr_upscaler", UNAVAILABLE), 400, None, 400,
     "hr_upscaler: needs a pixel upscaler, none is available"),
    (EngineError("unknown upscaler 'x' (known: None)", "upscaler", NOT_FOUND), 422, "upscaler_1", 404,
     "upscaler_1: unknown upscaler 'x' (known: None)"),
    (EngineError("corrupt safetensors file (header is not a table)", label="model.safetensors"), 400, None, 400,
     "model.safetensors: corrupt safetensors file (header is not a table)"),
    # a reason that itself holds ": " is not split: the field comes from the error, not its text
    (EngineError("<lora:a:b>: te weight must be between -10 and 10", "prompt"), 400, None, 400,
     "prompt: <lora:a:b>: te weight must be between -10 and 10"),
    (EngineError("schedule type: unknown 'x'"), 400, None, 400, "schedule type: unknown 'x'"),  # no field: as is
])
def test_api_status_follows_the_kind_and_names_the_request_field(error, status, field, expected_status, expected):
    from app.api.errors import engine_error

    answer = engine_error(error, status, field)
    assert (answer.status, answer.message) == (expected_status, expected)


def test_the_api_answers_bad_hires_names_with_their_own_field():
    from fastapi.testclient import TestClient

    from app.server import create_app
    from fake_engine import FakeEngine

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        app = create_app(FakeEngine(Path(folder)), ui=False)
        with TestClient(app, base_url="http://127.0.0.1:7860") as client:
            for name, value in (("hr_sampler_name", "Nope"), ("hr_scheduler", "Wavy")):
                answer = client.post("/sdapi/v1/txt2img", json={"enable_hr": True, "hr_upscaler": "Latent", name: value})
                assert answer.status_code == 404, answer.text
                assert answer.json()["detail"].startswith(f"{name}: unknown {value!r} (known: ")


# --- the page: the engine's errors by class -----------------------------------------------------------------------


def test_the_page_tells_engine_errors_by_class_not_by_name():
    from app.page.messages import error_message

    class EngineError(Exception):  # noqa: N818 - a stranger with the same name is not the engine's error
        pass

    from core.errors import EngineError as Real

    assert error_message(Real("not found in /models", "checkpoint", NOT_FOUND)) == "checkpoint: not found in /models"
    assert error_message(EngineError("boom")) == "Generation failed: EngineError: boom"


def test_the_page_recognises_torch_out_of_memory():
    import torch

    from app.page.messages import error_message

    assert error_message(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")).startswith("Out of memory:")
