"""One upscale job (core.upscaling.extras) behind the command line, the REST API and the page."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from test_upscaling import SRVGGCompact, _calibrate, _save_pair

TILE, OVERLAP = 8, 4  # small tiles on a 24x20 picture: several per pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A models folder holding a tiny Real-ESRGAN compact x2 model, an engine over it, and a picture."""
    import torch

    from core.engine import Engine

    root = tmp_path_factory.mktemp("extras")
    torch.manual_seed(0)
    compact = SRVGGCompact(nf=8, num_conv=2, scale=2)
    _calibrate(compact, compact.body[-1], 0.1, None)
    _save_pair(root / "models" / "RealESRGAN", "compact-x2", compact.state_dict())
    (root / "models" / "Stable-diffusion").mkdir()
    engine = Engine(device="cpu", ckpt_dir=root / "models" / "Stable-diffusion", output_dir=root / "outputs",
                    hash_cache=root / "hashes.json", models_dir=root / "models", extensions_dir=root / "no-extensions")
    rng = np.random.default_rng(3)
    source = root / "outputs" / "source.png"
    source.parent.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(source)
    config = root / "config.json"
    config.write_text(json.dumps({"ESRGAN_tile": TILE, "ESRGAN_tile_overlap": OVERLAP}))
    return root, engine, source, config


def page(site):
    from app.settings import Settings
    from app.page.studio import StudioUI
    from app.styles import StyleDatabase

    root, engine, _, config = site
    return StudioUI(engine, settings=Settings(config), styles=StyleDatabase(root / "styles.csv"),
                    allowed_dirs=[root / "outputs"])


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int32)


def test_the_command_line_the_api_and_the_page_give_the_same_pixels(site, tmp_path):
    from fastapi.testclient import TestClient

    from app.server import create_app
    from core.__main__ import main

    root, engine, source, config = site
    assert main(["upscale", "--image", str(source), "--upscaler", "compact-x2", "--scale", "2", "--out", str(tmp_path),
                 "--models-dir", str(root / "models"), "--tile", str(TILE), "--tile-overlap", str(OVERLAP)]) == 0
    with Image.open(next(tmp_path.glob("*.png"))) as written:
        by_cli = pixels(written)

    app = create_app(engine, ui=False, options_path=config)
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        answer = client.post("/sdapi/v1/extra-single-image", json={
            "image": base64.b64encode(source.read_bytes()).decode(), "upscaler_1": "compact-x2", "upscaling_resize": 2})
    assert answer.status_code == 200, answer.text
    by_api = pixels(Image.open(io.BytesIO(base64.b64decode(answer.json()["image"]))))

    _, _, _, items = page(site).superres.upscale("Single image", str(source), "", "", "compact-x2", "Scale by", 2, 0, 0)
    with Image.open(items[0]["path"]) as saved:
        by_page = pixels(saved)

    assert by_cli.shape == (40, 48, 3)
    assert np.array_equal(by_cli, by_api) and np.array_equal(by_cli, by_page)
    with Image.open(source) as original:  # the model ran: not what a resampler makes
        lanczos = pixels(original.resize((48, 40), Image.LANCZOS))
    assert np.abs(by_cli - lanczos).max() > 8


def test_the_page_upscales_in_the_settings_tiles_and_keeps_the_model(site):
    root, engine, source, _ = site
    engine.upscaler_cache.clear()
    ui = page(site)
    seen: list[str] = []
    ui.superres.upscale("Single image", str(source), "", "", "compact-x2", "Scale by", 2, 0, 0,
               progress=lambda fraction, text: seen.append(text))
    tiles = [text for text in seen if ": tile " in text]
    # 24x20 input pixels in tiles of 8 with an overlap of 4: 5 x 4 tiles, not the one a 256-px tile makes
    assert tiles and tiles[-1].endswith("tile 20/20"), seen
    loaded = engine.upscaler_cache.loaded
    assert loaded is not None and loaded.info.name == "compact-x2"

    from core.upscaling import get_kind

    kind = get_kind(loaded.info.kind)
    loads: list[str] = []
    real_load = kind.load
    kind.load = lambda info, device, dtype: loads.append(info.name) or real_load(info, device, dtype)
    try:
        ui.superres.upscale("Single image", str(source), "", "", "compact-x2", "Scale by", 2, 0, 0)
    finally:
        del kind.load
    assert loads == [] and engine.upscaler_cache.loaded is loaded  # the second upscale did not load it again


def test_a1111_scale_to_covers_then_crops_and_blends_a_second_upscaler(site):
    from core.upscaling.extras import ExtrasJob, run_extras

    root, engine, source, _ = site
    with Image.open(source) as opened:
        image = opened.copy()
    cropped = run_extras(image, ExtrasJob("Lanczos", size=(60, 30), crop=True), models_root=root / "models")
    assert cropped.image.size == (60, 30) and "Postprocess upscale to: 60x30" in cropped.infotext
    whole = run_extras(image, ExtrasJob("Lanczos", size=(60, 30), crop=False), models_root=root / "models")
    assert whole.image.size == (60, 50)  # enlarged by 2.5 to cover 60x30, nothing cut
    exact = run_extras(image, ExtrasJob("Lanczos", size=(60, 0)), models_root=root / "models")
    assert exact.image.size == (60, 50) and "Postprocess upscale to: 60x50" in exact.infotext
    blended = run_extras(image, ExtrasJob("Lanczos", scale=2, upscaler_2="Nearest", upscaler_2_visibility=0.5),
                         models_root=root / "models")
    lanczos = image.resize((48, 40), Image.LANCZOS)
    nearest = image.resize((48, 40), Image.NEAREST)
    assert np.abs(pixels(blended.image) - pixels(Image.blend(lanczos, nearest, 0.5))).max() <= 1
    assert blended.infotext == 'Postprocess upscale by: 2, Postprocess upscaler: "Lanczos, Nearest"'


def test_upscaler_none_gives_the_picture_back_unchanged_as_a1111_extras_does(site):
    from core.upscaling.extras import ExtrasJob, run_extras

    root, engine, source, _ = site
    with Image.open(source) as opened:
        image = opened.copy()
    for job in (ExtrasJob("None", scale=2), ExtrasJob("None", size=(60, 30), crop=True),
                ExtrasJob("None", scale=3, upscaler_2="Lanczos", upscaler_2_visibility=0.5)):
        kept = run_extras(image, job, models_root=root / "models")
        assert kept.image.size == image.size and np.array_equal(pixels(kept.image), pixels(image))
        assert "Postprocess" not in kept.infotext
    _, info, log, items = page(site).superres.upscale("Single image", str(source), "", "", "None", "Scale by", 2, 0, 0)
    with Image.open(items[0]["path"]) as saved:
        assert np.array_equal(pixels(saved), pixels(image))
    assert "no resampling" in log and items[0]["size"] == "24x20 → 24x20"


def test_a_progress_callback_that_raises_stops_the_job(site):
    from core.upscaling.extras import ExtrasJob

    root, engine, source, _ = site
    calls: list[tuple[int, int]] = []

    class Stop(Exception):
        pass

    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        raise Stop()

    with Image.open(source) as opened, pytest.raises(Stop):
        engine.extras(opened.copy(), ExtrasJob("compact-x2", scale=2, tile=TILE, overlap=OVERLAP), progress=progress)
    assert calls == [(1, 20)]
