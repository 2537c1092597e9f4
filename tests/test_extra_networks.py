"""Extra networks (issue #17): the cards' listing, previews and metadata, the prompt's token
count as A1111 shows it, the paste-parameters button and separate VAE files (the engine's swap,
the page's menu, the API's sd_vae). The browser's side is tests/test_browser_extranet.py."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from core.errors import EngineError

pytestmark = pytest.mark.usefixtures("one_thread")


# --- token counts ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    from core.text.tokenizer import load_clip_tokenizer

    return load_clip_tokenizer()


def count(tokenizer, prompt, embeddings=None, steps=20):
    from core.conditioning import prompt_token_count

    return prompt_token_count(tokenizer, prompt, steps, embeddings)


def test_token_counts_grow_by_chunks_of_75(tokenizer):
    assert count(tokenizer, "") == (0, 75)
    assert count(tokenizer, "a cat") == (2, 75)
    assert count(tokenizer, " ".join(["cat"] * 75)) == (75, 75)
    assert count(tokenizer, " ".join(["cat"] * 80)) == (80, 150)
    assert count(tokenizer, " ".join(["cat"] * 151)) == (151, 225)


def test_emphasis_brackets_and_weights_are_not_tokens(tokenizer):
    assert count(tokenizer, "(cat:1.5) [dog] ((bird))") == (3, 75)
    assert count(tokenizer, "\\(cat\\)")[0] == 3  # escaped brackets are text


def test_break_fills_its_chunk_and_tags_are_not_counted(tokenizer):
    assert count(tokenizer, "cat BREAK dog") == (76, 150)
    assert count(tokenizer, "cat BREAK dog BREAK bird") == (151, 225)
    assert count(tokenizer, "<lora:style:0.8> cat, dog") == (3, 75)


def test_and_and_prompt_editing_count_their_longest_text(tokenizer):
    assert count(tokenizer, "cat AND dog dog dog") == (3, 75)
    assert count(tokenizer, "[cat:dog dog dog dog:5] bird") == (5, 75)


def test_a_chunk_cut_at_a_comma_counts_whole(tokenizer):
    words = ["cat"] * 70 + [","] + ["dog"] * 10  # the chunk is cut after the comma: 75 + 10
    assert count(tokenizer, " ".join(words)) == (85, 150)


def test_an_embedding_counts_its_vectors(tokenizer):
    from core.embeddings import Embedding, EmbeddingDatabase

    database = EmbeddingDatabase(None, tokenizer, 8)
    database.add(Embedding("mystyle", torch.zeros(6, 8), Path("mystyle.pt")), tokenizer)
    assert count(tokenizer, "a mystyle cat", database) == (8, 75)


def test_the_engine_and_the_fake_count_alike(tmp_path):
    from fake_engine import FakeEngine

    assert FakeEngine(tmp_path).count_tokens(" ".join(["cat"] * 80)) == (80, 150)


# --- metadata ------------------------------------------------------------------------------

def lora_file(path: Path, metadata: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(path), metadata=metadata)
    return path


def test_training_tags_are_summed_most_frequent_first(tmp_path):
    from core.network_info import network_info

    tags = {"10_people": {"red hair": 3, "smile": 9}, "5_more": {"red hair": 8, "hat": 1}}
    path = lora_file(tmp_path / "style.safetensors", {
        "ss_tag_frequency": json.dumps(tags), "ss_sd_model_name": "v1-5-pruned.safetensors",
        "ss_resolution": "(512, 512)", "ss_network_dim": "16"})
    info = network_info(path)
    assert info.tags == [("red hair", 11), ("smile", 9), ("hat", 1)]
    assert ("Base model", "v1-5-pruned.safetensors") in info.fields
    assert ("Resolution", "(512, 512)") in info.fields


def test_metadata_of_files_without_a_header_is_empty(tmp_path):
    from core.network_info import network_info

    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(struct.pack("<Q", 10**12) + b"{}")  # a header length far past the file
    plain = lora_file(tmp_path / "plain.safetensors")
    pickled = tmp_path / "old.pt"
    torch.save({"x": torch.zeros(1)}, pickled)
    for path in (broken, plain, pickled):
        info = network_info(path)
        assert (info.fields, info.tags) == ([], [])


def test_odd_tag_frequency_values_are_skipped(tmp_path):
    from core.network_info import training_tags

    assert training_tags({"ss_tag_frequency": "not json"}) == []
    assert training_tags({"ss_tag_frequency": json.dumps({"a": {"x": "many", "y": 2}, "b": 3})}) == [("y", 2)]


# --- separate VAE files ---------------------------------------------------------------------

VAE_PREFIX = "first_stage_model."


@pytest.fixture(scope="module")
def vae_engine(tiny_checkpoints, tmp_path_factory):
    """A real engine on the tiny checkpoint, with models/VAE holding a VAE of other weights."""
    from safetensors.torch import load_file

    from tiny_models import engine_on_tiny_checkpoint

    root = tmp_path_factory.mktemp("vae")
    (root / "no-extensions").mkdir()
    engine = engine_on_tiny_checkpoint(root, tiny_checkpoints["safetensors"], models_dir=root / "models",
                                       extensions_dir=root / "no-extensions")
    state = load_file(str(tiny_checkpoints["safetensors"]))
    vae = {key[len(VAE_PREFIX):]: value for key, value in state.items() if key.startswith(VAE_PREFIX)}
    generator = torch.Generator().manual_seed(5)
    other = {key: value + 0.05 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
             for key, value in vae.items()}
    engine.vae_dir.mkdir(parents=True)
    save_file({**other, "model_ema.decay": torch.tensor(0.999)}, str(engine.vae_dir / "other.safetensors"))
    torch.save({"state_dict": other}, engine.vae_dir / "other-pickled.pt")
    # the same weights, as a whole checkpoint built with that VAE (the oracle)
    save_file({**{k: v for k, v in state.items() if not k.startswith(VAE_PREFIX)},
               **{VAE_PREFIX + k: v for k, v in other.items()}}, str(root / "built-with-other.safetensors"))
    engine.test_root = root
    yield engine
    engine.vae = "Automatic"


def decoded(engine_or_model) -> torch.Tensor:
    from core.pipelines.common import decode_latents

    model = engine_or_model.loaded.model if hasattr(engine_or_model, "loaded") else engine_or_model
    latent = torch.linspace(-1, 1, 4 * 8 * 8).reshape(1, 4, 8, 8)
    return decode_latents(model.vae, latent)


def test_vae_files_are_listed(vae_engine):
    assert vae_engine.list_vaes() == ["other-pickled.pt", "other.safetensors"]


def test_a_swapped_vae_decodes_as_a_model_built_with_it(vae_engine):
    from core.loading import load_model

    engine = vae_engine
    engine.vae = "None"
    engine.load("tiny.safetensors")
    own = decoded(engine)
    engine.vae = "other.safetensors"
    engine.apply_vae()
    swapped = decoded(engine)
    assert not torch.allclose(own, swapped, atol=1e-3)
    oracle = load_model(engine.test_root / "built-with-other.safetensors")
    torch.testing.assert_close(swapped, decoded(oracle))
    assert engine.loaded.vae_path.name == "other.safetensors"
    engine.vae = "other-pickled.pt"  # the same weights from a pickle, read with weights_only
    engine.apply_vae()
    torch.testing.assert_close(decoded(engine), swapped)
    engine.vae = "None"  # the checkpoint's own again, without reading the checkpoint
    engine.apply_vae()
    torch.testing.assert_close(decoded(engine), own)
    assert engine.loaded.vae_path is None and engine.loaded.own_vae is None


def test_a_bad_vae_file_is_refused_and_the_model_keeps_its_vae(vae_engine):
    engine = vae_engine
    engine.vae = "other.safetensors"
    engine.load("tiny.safetensors")
    before = decoded(engine)
    folder = engine.vae_dir
    save_file({"decoder.conv_out.weight": torch.zeros(3, 3, 3, 3)}, str(folder / "partial.safetensors"))
    (folder / "garbage.safetensors").write_bytes(b"\x00" * 64)

    class Boom:
        def __reduce__(self):
            return (print, ("ran",))
    torch.save({"state_dict": Boom()}, folder / "code.ckpt")
    try:
        for name, words in (("partial.safetensors", "weights missing"), ("garbage.safetensors", "garbage"),
                            ("code.ckpt", "refused"), ("missing.safetensors", "not found"),
                            ("../tiny.safetensors", "outside the VAE folder")):
            engine.vae = name
            with pytest.raises(EngineError, match=words):
                engine.apply_vae()
            assert engine.loaded.vae_path.name == "other.safetensors"
            torch.testing.assert_close(decoded(engine), before)
    finally:
        for name in ("partial.safetensors", "garbage.safetensors", "code.ckpt"):
            (folder / name).unlink()


def test_the_vae_is_kept_when_the_checkpoint_changes(vae_engine):
    engine = vae_engine
    shutil.copy(engine.ckpt_dir / "tiny.safetensors", engine.ckpt_dir / "second.safetensors")
    try:
        engine.vae = "other.safetensors"
        engine.load("tiny.safetensors")
        swapped = decoded(engine)
        engine.load("second.safetensors")
        assert engine.loaded.vae_path.name == "other.safetensors"
        torch.testing.assert_close(decoded(engine), swapped)
    finally:
        engine.unload()
        (engine.ckpt_dir / "second.safetensors").unlink()


def test_automatic_takes_a_vae_named_like_the_checkpoint(vae_engine):
    engine = vae_engine
    engine.vae = "Automatic"
    engine.load("tiny.safetensors")
    assert engine.loaded.vae_path is None  # no VAE named like it: the checkpoint's own
    # beside the checkpoint as NAME.vae.safetensors, or in models/VAE under the checkpoint's name
    for place in (engine.ckpt_dir / "tiny.vae.safetensors", engine.vae_dir / "tiny.safetensors"):
        shutil.copy(engine.vae_dir / "other.safetensors", place)
        try:
            engine.apply_vae()
            assert engine.loaded.vae_path == place
        finally:
            place.unlink()
    engine.apply_vae()
    assert engine.loaded.vae_path is None  # gone again: the checkpoint's own
    engine.vae = "None"


def test_a_diffusers_vae_file_is_read(vae_engine, tiny_checkpoints):
    engine = vae_engine
    engine.vae = "None"
    engine.load("tiny.safetensors")
    own = decoded(engine)
    target = engine.vae_dir / "diffusers-layout.safetensors"
    shutil.copy(tiny_checkpoints["diffusers"] / "vae" / "diffusion_pytorch_model.safetensors", target)
    try:
        engine.vae = target.name
        engine.apply_vae()
        torch.testing.assert_close(decoded(engine), own)  # the same weights in diffusers' names
    finally:
        engine.vae = "None"
        engine.apply_vae()
        target.unlink()


def test_the_infotext_names_the_vae(vae_engine):
    from core.params import GenerationParams

    engine = vae_engine
    engine.vae = "other.safetensors"
    params = GenerationParams(prompt="a cat", steps=1, width=64, height=64, seed=3)
    try:
        infotext = engine.txt2img(params, save=False)[0].infotext
        short = engine.hashes.short(engine.vae_dir / "other.safetensors")
        assert f"Model: tiny, VAE hash: {short}, VAE: other.safetensors" in infotext
        engine.vae = "None"
        params = GenerationParams(prompt="a cat", steps=1, width=64, height=64, seed=3,
                                  extra={"VAE hash": "0123456789", "VAE": "pasted.pt"})
        infotext = engine.txt2img(params, save=False)[0].infotext
        assert "VAE" not in infotext  # what a pasted infotext said is not written for the own VAE
    finally:
        engine.vae = "None"


# --- the page: cards, clicks, previews, paste, VAE menu -------------------------------------

@pytest.fixture
def studio(tmp_path):
    from PIL import Image

    from app.page.studio import StudioUI
    from app.settings import Settings
    from app.styles import StyleDatabase
    from fake_engine import FakeEngine

    engine = FakeEngine(tmp_path)
    lora = engine.lora_dir
    (lora / "styles").mkdir(parents=True)
    lora_file(lora / "pastel.safetensors", {"ss_tag_frequency": json.dumps({"1_x": {"pastel": 4, "soft": 7}}),
                                            "ss_base_model_version": "sd_v1"})
    Image.new("RGB", (8, 8), (255, 0, 0)).save(lora / "pastel.preview.png")
    lora_file(lora / "styles" / "ink.safetensors")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(lora / "styles" / "ink.png")
    engine.embeddings_dir.mkdir(parents=True)
    torch.save({"string_to_param": {"*": torch.zeros(2, 8)}}, engine.embeddings_dir / "bad-hands.pt")
    engine.ckpt_dir.mkdir(parents=True)
    (engine.ckpt_dir / "sd15.safetensors").write_bytes(b"x")
    Image.new("RGB", (8, 8)).save(engine.ckpt_dir / "sd15.preview.png")
    engine.vae_dir.mkdir(parents=True)
    (engine.vae_dir / "clear.safetensors").write_bytes(b"x")
    return StudioUI(engine, settings=Settings(tmp_path / "config.json"), styles=StyleDatabase(tmp_path / "s.csv"))


def click(kind: str, name: str, action: str = "use") -> str:
    return json.dumps({"kind": kind, "name": name, "action": action})


def test_cards_of_each_kind_with_their_previews(studio):
    networks, engine = studio.extra_networks, studio.engine
    assert [(c.name, c.preview) for c in networks.cards("lora")] == [
        ("pastel", engine.lora_dir / "pastel.preview.png"), ("styles/ink", engine.lora_dir / "styles" / "ink.png")]
    assert [c.name for c in networks.cards("textual_inversion")] == ["bad-hands"]
    checkpoints = networks.cards("checkpoints")
    assert checkpoints[0].preview == engine.ckpt_dir / "sd15.preview.png"
    assert [c.name for c in networks.cards("lora", "  InK ")] == ["styles/ink"]
    assert "nothing matches" in networks.cards_html("txt2img", "lora", "zebra")
    grid = networks.cards_html("img2img", "lora")
    assert 'data-tab="img2img"' in grid and grid.count('class="studio-card"') == 2
    assert "/gradio_api/file=" + str(engine.lora_dir / "pastel.preview.png") in grid


def test_a_click_adds_the_tag_the_name_or_switches_the_checkpoint(studio):
    networks = studio.extra_networks
    prompt, checkpoint, info, load = networks.pick(click("lora", "styles/ink"), "a cat")
    assert prompt == "a cat <lora:styles/ink:1>" and load is None
    assert networks.pick(click("textual_inversion", "bad-hands"), "")[0] == "bad-hands"
    prompt, checkpoint, _, load = networks.pick(click("checkpoints", "sd15.safetensors"), "a cat")
    assert checkpoint == load == "sd15.safetensors"
    assert list(studio.models.load_picked_checkpoint(load))[-1].endswith("Loaded: sd15</div>")
    assert studio.engine.loaded.name == "sd15"
    import gradio as gr

    for payload in (click("lora", "../Lora/pastel"), click("lora", "/etc/passwd"), "not json",
                    json.dumps({"kind": "vae", "name": "x"})):
        with pytest.raises(gr.Error):
            networks.pick(payload, "a cat")


def test_the_info_button_shows_training_tags_and_base_model(studio):
    _, _, info, _ = studio.extra_networks.pick(click("lora", "pastel", "info"), "a cat")
    assert info.index("soft") < info.index("pastel <b>4</b>")  # most frequent first
    assert "Base model version" in info and "sd_v1" in info


def test_model_previews_are_served_and_nothing_else_in_the_model_folders(studio, tmp_path):
    from app.guards import FileAccessGuard

    engine = studio.engine
    guard = FileAccessGuard(None, image_roots=[engine.output_dir], gradio_dirs=[],
                            preview_roots=[engine.ckpt_dir, engine.lora_dir, engine.embeddings_dir])
    assert guard.allows(str(engine.lora_dir / "pastel.preview.png"))
    assert guard.allows(str(engine.lora_dir / "styles" / "ink.png"))
    assert guard.allows(str(engine.ckpt_dir / "sd15.preview.png"))
    stray = engine.lora_dir / "stray.png"  # a picture with no model beside it
    stray.write_bytes((engine.lora_dir / "styles" / "ink.png").read_bytes())
    assert not guard.allows(str(stray))
    assert not guard.allows(str(engine.lora_dir / "pastel.safetensors"))
    assert not guard.allows(str(engine.lora_dir / "styles" / ".." / "pastel.preview.png"))
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(stray.read_bytes())
    (tmp_path / "elsewhere.safetensors").write_bytes(b"x")
    assert not guard.allows(str(outside))
    assert not FileAccessGuard(None, [engine.output_dir], []).allows(str(engine.lora_dir / "pastel.preview.png"))


def test_token_counter_html(studio):
    tools = studio.prompt_tools
    assert tools.count(" ".join(["cat"] * 80), 20) == '<span class="studio-token-counter">80/150</span>'
    assert tools.count_both("", "cat BREAK dog", "x") == ('<span class="studio-token-counter">0/75</span>',
                                                          '<span class="studio-token-counter">76/150</span>')


def test_paste_reads_the_prompt_box_or_the_last_generation(studio):
    import gradio as gr

    from app.page.generation import text_fields

    names = text_fields("txt2img")
    infotext = "a red fox\nNegative prompt: blurry\nSteps: 33, Sampler: Euler, CFG scale: 5.5, Seed: 77, Size: 320x256"
    values = dict(zip(names, studio.prompt_tools.paste("txt2img", names, infotext, [])))
    assert (values["prompt"], values["negative_prompt"], values["steps"], values["cfg_scale"], values["seed"],
            values["width"], values["height"]) == ("a red fox", "blurry", 33, 5.5, 77, 320, 256)
    last = [{"path": None, "infotext": infotext.replace("33", "12"), "seed": 77}]
    values = dict(zip(names, studio.prompt_tools.paste("txt2img", names, "  ", last)))
    assert values["steps"] == 12 and values["prompt"] == "a red fox"
    with pytest.raises(gr.Error, match="Nothing to read"):
        studio.prompt_tools.paste("txt2img", names, "", [])


def test_the_vae_menu_lists_files_and_saves_its_choice(studio):
    import gradio as gr

    models, engine = studio.models, studio.engine
    assert models.vae_choices() == ["Automatic", "None", "clear.safetensors"]
    engine.load("sd15.safetensors")
    models.change_vae("clear.safetensors")
    assert engine.vae == "clear.safetensors" and studio.settings["sd_vae"] == "clear.safetensors"
    assert engine.loaded.vae_path == engine.vae_dir / "clear.safetensors"
    with pytest.raises(gr.Error, match="not found"):
        models.change_vae("gone.safetensors")
    assert engine.vae == "clear.safetensors" and studio.settings["sd_vae"] == "clear.safetensors"
    models.change_vae("None")
    assert engine.loaded.vae_path is None and studio.settings["sd_vae"] == "None"


def test_sd_vae_by_the_api(vae_engine, tmp_path):
    from fastapi.testclient import TestClient

    from app.server import create_app

    engine = vae_engine
    engine.vae = "None"
    engine.load("tiny.safetensors")
    app = create_app(engine, api=True, ui=False, options_path=tmp_path / "config.json")
    job = {"prompt": "a cat", "steps": 1, "width": 64, "height": 64, "seed": 1, "save_images": False}
    try:
        with TestClient(app, base_url="http://127.0.0.1") as client:
            listed = client.get("/sdapi/v1/sd-vae").json()
            assert [item["model_name"] for item in listed] == ["other-pickled.pt", "other.safetensors"]
            assert client.post("/sdapi/v1/options", json={"sd_vae": "other.safetensors"}).status_code == 200
            assert client.get("/sdapi/v1/options").json()["sd_vae"] == "other.safetensors"
            assert engine.loaded.vae_path.name == "other.safetensors"
            refused = client.post("/sdapi/v1/options", json={"sd_vae": "missing.safetensors"})
            assert refused.status_code == 404 and "missing.safetensors" in refused.json()["detail"]
            assert client.get("/sdapi/v1/options").json()["sd_vae"] == "other.safetensors"
            answer = client.post("/sdapi/v1/txt2img", json=job).json()
            info = json.loads(answer["info"])
            assert "VAE: other.safetensors" in info["infotexts"][0]
            assert info["sd_vae_name"] == "other.safetensors" and len(info["sd_vae_hash"]) == 10
            answer = client.post("/sdapi/v1/txt2img", json={**job, "override_settings": {"sd_vae": "None"}}).json()
            assert "VAE" not in json.loads(answer["info"])["infotexts"][0]
            assert engine.vae == "other.safetensors"  # the saved choice again after the job
    finally:
        engine.vae = "None"
        engine.apply_vae()


def test_a_saved_vae_that_is_gone_falls_back_to_automatic(tmp_path):
    from app.page.studio import StudioUI
    from app.settings import Settings
    from app.styles import StyleDatabase
    from fake_engine import FakeEngine

    settings = Settings(tmp_path / "config.json")
    settings.update({"sd_vae": "deleted.safetensors"})
    engine = FakeEngine(tmp_path)
    StudioUI(engine, settings=settings, styles=StyleDatabase(tmp_path / "s.csv"))
    assert engine.vae == "Automatic"
    engine.vae_dir.mkdir(parents=True)
    (engine.vae_dir / "deleted.safetensors").write_bytes(b"x")
    StudioUI(engine, settings=settings, styles=StyleDatabase(tmp_path / "s.csv"))
    assert engine.vae == "deleted.safetensors"


def test_many_alternations_are_counted_within_a_bound(tokenizer):
    prompt = "[" + "|".join(f"word{i}" for i in range(200)) + "] cat"
    tokens, limit = count(tokenizer, prompt, steps=150)
    assert 2 <= tokens <= 75 and limit == 75
