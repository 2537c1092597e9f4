"""Loading edge cases of issue #14: what a user places in the model folders (links, upper-case
suffixes, damaged files) and what a request may ask of them (names, LoRA weights, samplers),
through the engine, the REST API (create_app) and the command line.

Every model is tiny (tests/tiny_models.py) and every job 64x64 with one step.
"""
from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import save_file

from app.server import create_app
from core.embeddings import EmbeddingDatabase, read_embedding_vectors
from core.engine import Engine
from core.errors import EngineError
from core.loading import load_model, read_safetensors, read_safetensors_header, read_tensor_file
from core.params import GenerationParams
from core.upscaling import find_upscaler, list_upscalers
from extensions.lora import find_lora, list_loras

ROOT = Path(__file__).resolve().parent.parent
API = "/sdapi/v1"
# A Linear layer of the tiny UNet (32 -> 32), in kohya's LoRA naming.
LINEAR = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"

pytestmark = pytest.mark.usefixtures("one_thread")


# --- helpers -----------------------------------------------------------------------------------

def local_client(app, **kwargs) -> TestClient:
    """A test client that calls the app by a name it answers to (HostOriginMiddleware refuses
    TestClient's default Host, "testserver")."""
    return TestClient(app, base_url="http://127.0.0.1", **kwargs)


def write_safetensors(path: Path, header: dict, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def lora_file(path: Path, down_shape, up_shape, seed: int = 0) -> Path:
    generator = torch.Generator().manual_seed(seed)
    save_file({f"{LINEAR}.lora_down.weight": torch.randn(*down_shape, generator=generator) * 0.3,
               f"{LINEAR}.lora_up.weight": torch.randn(*up_shape, generator=generator) * 0.3,
               f"{LINEAR}.alpha": torch.tensor(4.0)}, str(path))
    return path


def make_engine(root: Path, extensions: tuple[str, ...] = ()) -> Engine:
    """An engine over ``root/models`` with only the named built-in extensions."""
    folder = root / "extensions"
    folder.mkdir(parents=True, exist_ok=True)
    for name in extensions:
        shutil.copytree(ROOT / "extensions" / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "models" / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    engine = Engine(device="cpu", ckpt_dir=root / "models" / "Stable-diffusion", output_dir=root / "outputs",
                    hash_cache=root / "hashes.json", models_dir=root / "models", extensions_dir=folder)
    for name in extensions:
        assert engine.extensions.extensions[name].enabled, engine.extensions.extensions[name].error
    return engine


def job(prompt: str = "a cat", **kwargs) -> GenerationParams:
    return GenerationParams(**{**dict(prompt=prompt, steps=1, cfg_scale=1.0, width=64, height=64, seed=3,
                                      checkpoint="tiny.safetensors"), **kwargs})


def small_request(**kwargs) -> dict:
    return {"prompt": "a cat", "steps": 1, "cfg_scale": 1.0, "width": 64, "height": 64, "seed": 3, **kwargs}


def detail(response) -> str:
    return response.json()["detail"] if isinstance(response.json().get("detail"), str) else json.dumps(response.json())


# --- 1. links the user placed in the model folders are followed; names from requests stay inside ----

@pytest.fixture
def linked(tiny_checkpoints, tmp_path):
    """models/ whose checkpoints, LoRAs, VAEs, embeddings and upscalers are links to files and
    folders kept elsewhere, as the README suggests for a big collection."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "collection").mkdir(parents=True)
    real = elsewhere / "real.safetensors"
    shutil.copy(tiny_checkpoints["safetensors"], real)
    shutil.copy(tiny_checkpoints["safetensors"], elsewhere / "collection" / "deep.safetensors")
    engine = make_engine(tmp_path)
    ckpts = engine.ckpt_dir
    (ckpts / "linked.safetensors").symlink_to(real)
    (ckpts / "collection").symlink_to(elsewhere / "collection", target_is_directory=True)
    (ckpts / "loop").symlink_to(ckpts, target_is_directory=True)  # a link back up must not loop

    models = tmp_path / "models"
    for folder in ("Lora", "VAE", "embeddings", "RealESRGAN"):
        (elsewhere / folder).mkdir()
        (models / folder).mkdir()
        (models / folder / "linked").symlink_to(elsewhere / folder, target_is_directory=True)
    lora_file(elsewhere / "Lora" / "Style.SAFETENSORS", (4, 32), (32, 4))
    save_file({"decoder.conv_in.weight": torch.zeros(1)}, str(elsewhere / "VAE" / "ft.SAFETENSORS"))
    save_file({"emb_params": torch.randn(2, 32)}, str(elsewhere / "embeddings" / "glow.SAFETENSORS"))
    torch.save({"string_to_param": {"*": torch.randn(1, 32)}}, elsewhere / "embeddings" / "shiny.PT")
    shutil.copy(elsewhere / "Lora" / "Style.SAFETENSORS", elsewhere / "RealESRGAN" / "Sharp.SAFETENSORS")
    return engine


def test_checkpoints_linked_into_the_folder_are_listed_resolved_and_loaded(linked):
    engine = linked
    names = engine.list_checkpoints()
    assert "linked.safetensors" in names and "collection/deep.safetensors" in names
    assert not [n for n in names if n.startswith("loop/")]  # the folder is walked once
    # The path keeps the name the user gave the link (the model is called "linked").
    assert engine.resolve_checkpoint("linked.safetensors") == engine.ckpt_dir.absolute() / "linked.safetensors"
    assert engine.resolve_checkpoint("collection/deep.safetensors").is_file()
    with engine.exclusive():
        assert engine.load("linked.safetensors").name == "linked"


@pytest.mark.parametrize("name", [
    "../elsewhere/real.safetensors",
    "collection/../../elsewhere/real.safetensors",
    "linked.safetensors/../../elsewhere/real.safetensors",
    "..\\elsewhere\\real.safetensors",
    "/etc/passwd",
    "C:\\Windows\\win.ini",
])
def test_names_that_leave_the_checkpoint_folder_are_refused(linked, tmp_path, name):
    with pytest.raises(EngineError, match=r"^checkpoint: .* is outside the checkpoint folder"):
        linked.resolve_checkpoint(name)
    with pytest.raises(EngineError, match="outside the checkpoint folder"):
        linked.resolve_checkpoint(str(tmp_path / "elsewhere" / "real.safetensors"))


def test_the_api_lists_and_switches_to_linked_checkpoints(linked):
    with local_client(create_app(linked, ui=False)) as client:
        models = client.get(f"{API}/sd-models")
        assert models.status_code == 200, models.text
        titles = [m["title"] for m in models.json()]
        assert "linked.safetensors" in titles and "collection/deep.safetensors" in titles
        assert client.get(f"{API}/options").status_code == 200
        switched = client.post(f"{API}/options", json={"sd_model_checkpoint": "collection/deep.safetensors"})
        assert switched.status_code == 200, switched.text
        assert linked.loaded.name == "deep"
        assert client.get(f"{API}/options").json()["sd_model_checkpoint"].startswith("collection/deep.safetensors")
        refused = client.post(f"{API}/options", json={"sd_model_checkpoint": "../elsewhere/real.safetensors"})
        assert refused.status_code == 404 and "sd_model_checkpoint" in detail(refused)
        assert linked.loaded.name == "deep"

        loras = {item["name"] for item in client.get(f"{API}/loras").json()}
        assert loras == {"Style"}
        assert [v["model_name"] for v in client.get(f"{API}/sd-vae").json()] == ["linked/ft.SAFETENSORS"]


def test_linked_lora_embedding_and_upscaler_folders_are_followed(linked, tmp_path):
    models = tmp_path / "models"
    lora, note = find_lora(models / "Lora", "linked/Style")
    assert lora == models / "Lora" / "linked" / "Style.SAFETENSORS" and not note
    assert [item["relative"] for item in list_loras(models)] == ["linked/Style"]

    database = EmbeddingDatabase(models / "embeddings", linked.tokenizer, 32)
    assert set(database.by_name) == {"glow", "shiny"}, database.skipped
    assert database.by_name["glow"].vectors.shape == (2, 32)

    listed = {u.name: u for u in list_upscalers(models)}
    assert listed["Sharp"].path == models / "RealESRGAN" / "linked" / "Sharp.SAFETENSORS"
    found = find_upscaler("RealESRGAN/linked/Sharp.SAFETENSORS", models)
    assert found.path == models.absolute() / "RealESRGAN" / "linked" / "Sharp.SAFETENSORS"
    for outside in ("../elsewhere/RealESRGAN/Sharp.SAFETENSORS", "RealESRGAN/linked/../../../elsewhere/Lora/Style.SAFETENSORS",
                    str(tmp_path / "elsewhere" / "RealESRGAN" / "Sharp.SAFETENSORS")):
        with pytest.raises(EngineError, match="outside the models folder"):
            find_upscaler(outside, models)


# --- 2. suffixes in any case -------------------------------------------------------------------------

def test_upper_case_suffixes_are_read_as_safetensors(tiny_checkpoints, tmp_path):
    engine = make_engine(tmp_path)
    shutil.copy(tiny_checkpoints["safetensors"], engine.ckpt_dir / "LOUD.SAFETENSORS")
    tensors, _ = read_tensor_file(engine.ckpt_dir / "LOUD.SAFETENSORS")
    assert tensors and all(isinstance(t, torch.Tensor) for t in tensors.values())
    assert engine.list_checkpoints()[0] == "LOUD.SAFETENSORS"
    with engine.exclusive():
        assert engine.load("LOUD.SAFETENSORS").model.spec.family == load_model(tiny_checkpoints["safetensors"]).spec.family

    vectors = torch.randn(3, 32)
    save_file({"emb_params": vectors}, str(tmp_path / "word.Safetensors"))
    assert torch.equal(read_embedding_vectors(tmp_path / "word.Safetensors"), vectors)


# --- 3. a malformed safetensors header is refused before anything maps it ------------------------------

GOOD = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}


@pytest.mark.parametrize("header,reason", [
    ({"w": {**GOOD, "shape": [-2, -2]}}, "shape [-2, -2] is not a list of whole numbers >= 0"),
    ({"w": {**GOOD, "shape": [-1, 4], "data_offsets": [0, 0]}}, "shape"),
    ({"w": {**GOOD, "shape": [2.0, 2]}}, "shape"),
    ({"w": {**GOOD, "shape": [True, 4]}}, "shape"),
    ({"w": {**GOOD, "shape": "2x2"}}, "shape"),
    ({"w": {**GOOD, "dtype": "F42"}}, "unknown dtype 'F42'"),
    ({"w": {**GOOD, "dtype": None}}, "unknown dtype"),
    ({"w": {**GOOD, "data_offsets": [0, 1 << 40]}}, "outside the file"),
    ({"w": {**GOOD, "data_offsets": [-16, 0]}}, "outside the file"),
    ({"w": {**GOOD, "data_offsets": [16, 0]}}, "outside the file"),
    ({"w": {**GOOD, "data_offsets": [0, 12]}}, "needs 16 bytes"),
    ({"w": {**GOOD, "shape": [1 << 62, 4]}}, "needs"),
    ({"w": {**GOOD, "data_offsets": [0]}}, "data_offsets"),
    ({"w": [1, 2]}, "not a table"),
    ({"__metadata__": ["x"], "w": GOOD}, "__metadata__ is not a table"),
])
def test_malformed_headers_are_refused_naming_the_file(tmp_path, header, reason):
    path = write_safetensors(tmp_path / "bad.safetensors", header, bytes(16))
    for read in (read_safetensors_header, read_safetensors, load_model):
        with pytest.raises(EngineError) as info:
            read(path)
        message = str(info.value)
        assert message.startswith("bad.safetensors: corrupt") and reason in message and "\n" not in message


def test_bad_json_and_huge_header_lengths_are_refused(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", 5) + b"[[[[[")
    with pytest.raises(EngineError, match=r"^bad.safetensors: corrupt safetensors file \(header is not valid JSON\)"):
        load_model(path)
    path.write_bytes(struct.pack("<Q", 2000) + b"[" * 2000)  # nested too deep for the JSON reader
    with pytest.raises(EngineError, match="^bad.safetensors: corrupt"):
        load_model(path)
    with open(path, "wb") as f:  # a sparse file larger than the header limit claims to be all header
        f.write(struct.pack("<Q", 150_000_000))
        f.truncate(160_000_000)
    with pytest.raises(EngineError, match=r"^bad.safetensors: corrupt or truncated safetensors file \(header of 150000000"):
        read_safetensors_header(path)


@pytest.fixture
def damaged(tiny_checkpoints, tmp_path):
    """An engine whose folder holds a good checkpoint and one with a negative shape."""
    engine = make_engine(tmp_path)
    shutil.copy(tiny_checkpoints["safetensors"], engine.ckpt_dir / "tiny.safetensors")
    write_safetensors(engine.ckpt_dir / "negative.safetensors",
                      {"model.diffusion_model.out.2.weight": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}},
                      bytes(16))
    return engine


def test_the_api_answers_a_damaged_checkpoint_with_a_4xx_naming_it(damaged):
    with local_client(create_app(damaged, ui=False), raise_server_exceptions=False) as client:
        assert "negative.safetensors" in [m["title"] for m in client.get(f"{API}/sd-models").json()]
        switched = client.post(f"{API}/options", json={"sd_model_checkpoint": "negative.safetensors"})
        assert 400 <= switched.status_code < 500, switched.text
        assert "negative.safetensors: corrupt safetensors file" in detail(switched) and "shape" in detail(switched)
        generated = client.post(f"{API}/txt2img", json=small_request(
            override_settings={"sd_model_checkpoint": "negative.safetensors"}))
        assert 400 <= generated.status_code < 500, generated.text
        assert "negative.safetensors: corrupt safetensors file" in detail(generated)
        # the server goes on, and the good checkpoint still works
        good = client.post(f"{API}/txt2img", json=small_request(override_settings={"sd_model_checkpoint": "tiny.safetensors"}))
        assert good.status_code == 200, good.text


def test_the_command_line_names_a_damaged_checkpoint(damaged, tmp_path, capsys):
    from core.__main__ import main

    code = main(["txt2img", "--model", str(damaged.ckpt_dir / "negative.safetensors"), "--out", str(tmp_path / "out"),
                 "--steps", "1", "--width", "64", "--height", "64", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "negative.safetensors: corrupt safetensors file" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.png"))


def test_the_page_names_a_damaged_checkpoint(damaged, tmp_path):
    import gradio as gr

    from app.settings import Settings
    from app.page.studio import StudioUI
    from app.styles import StyleDatabase

    ui = StudioUI(damaged, settings=Settings(tmp_path / "config.json"), styles=StyleDatabase(tmp_path / "styles.csv"))
    updates = []
    with pytest.raises(gr.Error, match=r"negative\.safetensors: corrupt safetensors file \(tensor .*shape \[-1, -4\]"):
        for update in ui.models.load_checkpoint("negative.safetensors"):
            updates.append(update)
    assert "studio-error" in updates[-1] and "negative.safetensors: corrupt safetensors file" in updates[-1]
    assert damaged.loaded is None


def test_an_upscaler_with_a_damaged_header_is_refused_by_name(tmp_path):
    from core.upscaling.spandrel_models import read_state_dict

    path = write_safetensors(tmp_path / "4x-broken.safetensors",
                             {"body.0.weight": {"dtype": "F32", "shape": [-4, 1], "data_offsets": [0, 16]}}, bytes(16))
    with pytest.raises(EngineError, match=r"^4x-broken.safetensors: corrupt safetensors file \(tensor 'body.0.weight': shape"):
        read_state_dict(path)


# --- 4. and 5. LoRA: only what was applied is recorded; weights are bounded ------------------------------

@pytest.fixture(scope="module")
def lora_engine(tiny_checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-security")
    engine = make_engine(root, extensions=("lora",))
    shutil.copy(tiny_checkpoints["safetensors"], engine.ckpt_dir / "tiny.safetensors")
    (root / "models" / "Lora").mkdir()
    lora_file(root / "models" / "Lora" / "fits.safetensors", (4, 32), (32, 4))
    lora_file(root / "models" / "Lora" / "misfit.safetensors", (4, 40), (48, 4))  # no layer of this model
    return engine


def test_a_lora_skipped_for_its_shapes_is_not_in_the_lora_hashes(lora_engine, caplog):
    result = lora_engine.txt2img(job("a cat <lora:fits:1> <lora:misfit:1>"), save=False)[0]
    hashes = result.infotext.split("Lora hashes: ", 1)[1]
    assert hashes.startswith('"fits: ') and "misfit" not in hashes
    assert any(n.startswith("LoRA misfit: nothing in it matches the loaded model") and "shape" in n for n in result.notes)
    assert "LoRA misfit: nothing in it matches" in caplog.text

    alone = lora_engine.txt2img(job("a cat <lora:misfit:1>"), save=False)[0]
    assert "Lora hashes" not in alone.infotext
    assert any("misfit" in note for note in alone.notes)
    again = lora_engine.txt2img(job("a cat <lora:misfit:1>"), save=False)[0]  # merged state reused: same record
    assert "Lora hashes" not in again.infotext


@pytest.mark.parametrize("tag,why", [
    ("<lora:fits:1e308>", "te weight must be between -10 and 10, got 1e308"),
    ("<lora:fits:-11>", "te weight must be between -10 and 10, got -11"),
    ("<lora:fits:1:1e308>", "unet weight must be between -10 and 10, got 1e308"),
    ("<lora:fits:unet=inf>", "unet weight must be between -10 and 10, got inf"),
    ("<lora:fits:te=nan>", "te weight must be between -10 and 10, got nan"),
    ("<lora:fits:much>", "te weight must be a number, got 'much'"),
    ("<lora:fits:1:1:-3>", "dyn must be 0 or more, got -3"),
])
def test_lora_weights_out_of_range_are_refused_naming_the_tag(lora_engine, tag, why):
    with pytest.raises(EngineError) as info:
        lora_engine.txt2img(job(f"a cat {tag}"), save=False)
    assert str(info.value) == f"prompt: {tag}: {why}"
    assert lora_engine.extensions.extensions["lora"].enabled  # the user's mistake, not the extension's


def test_lora_weights_at_the_limits_still_generate(lora_engine):
    for tag in ("<lora:fits:-10>", "<lora:fits:10:0.5>", "<lora:fits:te=2:unet=-3>"):
        result = lora_engine.txt2img(job(f"a cat {tag}"), save=False)[0]
        assert np.asarray(result.image).std() > 0 and "Lora hashes" in result.infotext


def test_the_api_answers_a_huge_lora_weight_with_a_4xx(lora_engine):
    with local_client(create_app(lora_engine, ui=False), raise_server_exceptions=False) as client:
        response = client.post(f"{API}/txt2img", json=small_request(prompt="a cat <lora:fits:1e308>"))
        assert response.status_code == 400, response.text[:300]
        assert detail(response) == "prompt: <lora:fits:1e308>: te weight must be between -10 and 10, got 1e308"


# --- 6. the prompt history's REST routes are served, behind the server's auth ------------------------

def test_history_routes_are_mounted_behind_auth(tmp_path):
    engine = make_engine(tmp_path, extensions=("prompt_history",))
    images = engine.output_dir / "txt2img-images"
    images.mkdir(parents=True)
    inside = images / "kept.png"
    Image.new("RGB", (8, 8), (10, 200, 30)).save(inside)
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (250, 0, 0)).save(secret)

    def entry(uid: str, path: str) -> dict:
        return {"uid": uid, "created": time.time(), "finished": None, "duration": None, "kind": "txt2img",
                "status": "done", "prompt": f"prompt {uid}", "negative_prompt": "", "params": {}, "model_name": None,
                "model_hash": None, "seed": 1, "favourite": False,
                "images": [{"position": 0, "seed": 1, "subseed": None, "path": path, "infotext": "", "created": time.time()}]}

    auth = ("user", "secret words")
    with local_client(create_app(engine, ui=False, auth={auth[0]: auth[1]})) as client:
        assert client.get("/history/search").status_code == 401
        assert client.post("/history/import", json={}).status_code == 401
        document = {"format": "sd-studio-prompt-history", "version": 1, "entries": [entry("kept", str(inside))]}
        added = client.post("/history/import", json=document, auth=auth)
        assert added.status_code == 200 and added.json()["added"] == 1
        found = client.get("/history/search", params={"q": "kept"}, auth=auth)
        assert found.status_code == 200
        image_id = found.json()["entries"][0]["images"][0]["id"]
        served = client.get(f"/history/images/{image_id}", auth=auth)
        assert served.status_code == 200 and served.content == inside.read_bytes()
        assert client.get(f"/history/images/{image_id}").status_code == 401
        # ids beyond SQLite's integers are the client's mistake (422), not an overflow (500)
        for method, url in (("get", f"/history/entries/{10**30}"), ("delete", f"/history/entries/{10**30}"),
                            ("get", f"/history/images/{10**30}"), ("get", f"/history/search?offset={10**30}")):
            assert getattr(client, method)(url, auth=auth).status_code == 422, url
        assert client.post("/history/delete", json={"ids": [10**30]}, auth=auth).status_code == 422

        # A path outside the outputs folder in an imported document is never served: refused
        # at import, or kept but answered 404.
        for uid, path in (("outside", str(secret)), ("climbing", "txt2img-images/../../secret.png")):
            imported = client.post("/history/import", json={**document, "entries": [entry(uid, path)]}, auth=auth)
            assert imported.status_code in (200, 400), imported.text
            hits = client.get("/history/search", params={"q": uid}, auth=auth).json()["entries"]
            for hit in hits:
                for image in hit["images"]:
                    answer = client.get(f"/history/images/{image['id']}", auth=auth)
                    assert answer.status_code == 404 and secret.read_bytes() not in answer.content


def test_history_routes_are_absent_when_the_extension_is_disabled(tmp_path):
    engine = make_engine(tmp_path)  # no prompt_history extension
    with local_client(create_app(engine, ui=False)) as client:
        assert client.get("/history/search").status_code == 404


# --- 7. an unknown hires sampler is named as such ---------------------------------------------------------

def test_unknown_hires_sampler_and_schedule_name_their_own_fields(tmp_path):
    with pytest.raises(EngineError, match=r"^hr_sampler_name: unknown 'Nope'"):
        GenerationParams(enable_hr=True, hr_sampler_name="Nope").validate()
    with pytest.raises(EngineError, match=r"^hr_scheduler: unknown 'Wavy'"):
        GenerationParams(enable_hr=True, hr_scheduler="Wavy").validate()
    engine = make_engine(tmp_path)
    with local_client(create_app(engine, ui=False)) as client:
        for field, value in (("hr_sampler_name", "Nope"), ("hr_scheduler", "Wavy")):
            response = client.post(f"{API}/txt2img", json=small_request(enable_hr=True, hr_scale=2, **{field: value}))
            assert response.status_code == 404, response.text
            assert detail(response).startswith(f"{field}: unknown {value!r}")
