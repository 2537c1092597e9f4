"""File access through the served app (issue 14, "File access"): what the page's file routes
serve, which folders the page may save to, read and write, what a history import may point
at, and where a model download may come from.

Every test drives a real server (app.server.create_app with the page mounted, uvicorn on
127.0.0.1) with real HTTP requests, or the page's own callbacks on that server's page.
"""
from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import os
import sys
import threading
import types
from pathlib import Path

import gradio as gr
import pytest
import requests
from PIL import Image

from app.server import create_app
from test_api import LiveServer

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A page server over a real engine without checkpoints of its own: outputs, data folder
    (config.json, styles.csv), checkpoint folder and a folder outside all of them."""
    from core.engine import Engine

    root = tmp_path_factory.mktemp("security-files")
    outputs, data, outside = root / "outputs", root / "data", root / "outside"
    for folder in (outputs, data, outside, root / "models" / "Stable-diffusion"):
        folder.mkdir(parents=True)
    (data / "config.json").write_text('{"outdir": ""}', encoding="utf-8")
    (data / "styles.csv").write_text("name,prompt,negative_prompt\nsecret,a secret prompt,\n", encoding="utf-8")
    before = os.environ.get("SD_STUDIO_DATA_DIR")
    os.environ["SD_STUDIO_DATA_DIR"] = str(data)
    try:
        engine = Engine(device="cpu", ckpt_dir=root / "models" / "Stable-diffusion", output_dir=outputs,
                        hash_cache=root / "hashes.json", models_dir=root / "models")
        app = create_app(engine, api=False, ui=True, options_path=data / "config.json", allowed_paths=[outputs])
        with LiveServer(app) as server:
            yield types.SimpleNamespace(server=server, app=app, engine=engine, root=root, outputs=outputs,
                                        data=data, outside=outside, studio=app.state.page.studio)
    finally:
        if before is None:
            os.environ.pop("SD_STUDIO_DATA_DIR", None)
        else:
            os.environ["SD_STUDIO_DATA_DIR"] = before


def raw_get(server: LiveServer, target: str) -> tuple[int, bytes, str]:
    """GET ``target`` exactly as written (no client-side dot-segment removal or re-encoding)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("content-type") or ""
    finally:
        conn.close()


def png(path: Path, colour=(200, 30, 40), size=(16, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


# ---------------------------------------------------------------- what the file routes serve


def test_output_folder_setting_does_not_widen_what_is_served(site):
    """Settings -> Output folder "/" -> Apply used to open /gradio_api/file=/etc/passwd for good."""
    studio, server = site.studio, site.server
    with pytest.raises(gr.Error) as refused:
        studio.styles_settings.apply_settings(["outdir"], ["/"])
    message = refused.value.message
    assert message.startswith("Settings not saved") and "Output folder /" in message and "--outdir" in message
    assert studio.settings["outdir"] == "" and studio.outputs.output_root() == site.outputs
    for target in ("/gradio_api/file=/etc/passwd", "/gradio_api/file=/etc/hostname"):
        status, body, _ = raw_get(server, target)
        assert status == 403 and b"root:" not in body
    studio.styles_settings.apply_settings(["outdir"], [""])  # "reverting" changes nothing either
    assert raw_get(server, "/gradio_api/file=/etc/passwd")[0] == 403

    # a tab folder that leads out (absolute, or up and out) is refused the same way
    for key, value in (("outdir_txt2img", str(site.outside)), ("outdir_extras", "../../outside")):
        with pytest.raises(gr.Error, match="outside the output folder"):
            studio.styles_settings.apply_settings([key], [value])
    # a folder inside the outputs is fine, and is where the page then saves
    inside = site.outputs / "project-a"
    studio.styles_settings.apply_settings(["outdir"], [str(inside)])
    try:
        assert studio.outputs.output_root() == inside and studio.outputs.folder("txt2img") == inside / "txt2img-images"
    finally:
        studio.styles_settings.apply_settings(["outdir"], [""])

    # a config.json written before this check (or by hand) is ignored, and the page says why
    studio.settings.update({"outdir": str(site.outside), "outdir_img2img": str(site.outside / "i2i")})
    try:
        assert studio.outputs.output_root() == site.outputs
        assert studio.outputs.folder("img2img") == site.outputs / "img2img-images"
        problems = studio.outputs.folder_problems({})
        assert len(problems) == 2 and str(site.outside) in problems[0] and "--outdir" in problems[0]
        assert str(site.outside / "i2i") in problems[1]
        assert raw_get(server, f"/gradio_api/file={png(site.outside / 'x.png')}")[0] == 403
    finally:
        studio.settings.update({"outdir": "", "outdir_img2img": "img2img-images"})


def test_only_images_inside_the_outputs_are_served(site):
    server, outputs, outside = site.server, site.outputs, site.outside
    picture = png(outputs / "txt2img-images" / "2024-01-02" / "00001-7.png")
    trashed = png(outputs / "trash" / "txt2img-images" / "2024-01-02" / "00000-3.png", colour=(1, 2, 3))
    secret = png(outside / "secret.png", colour=(9, 9, 9))
    database = outputs / "history.sqlite3"
    assert database.is_file()  # the History extension keeps its prompts there
    (outputs / "notes.txt").write_text("private notes")
    (outputs / "server.log").write_text("a log line")
    (outputs / "link-to-passwd.png").symlink_to("/etc/passwd")
    (outputs / "link-to-outside.png").symlink_to(secret)
    (outputs / "images-link").symlink_to(outside, target_is_directory=True)
    (outputs / "history-link.png").symlink_to(database)

    status, body, kind = raw_get(server, f"/gradio_api/file={picture}")
    assert status == 200 and body == picture.read_bytes() and kind.startswith("image/png")
    assert raw_get(server, f"/gradio_api/file={trashed}")[1] == trashed.read_bytes()
    assert raw_get(server, f"/gradio_api/file={os.path.relpath(picture, os.getcwd())}")[0] == 200

    relative_db = os.path.relpath(database, os.getcwd())
    refused = [
        f"/gradio_api/file={database}",
        f"/gradio_api/file={relative_db}",
        f"/gradio_api/file/{database}",  # Gradio's older route
        f"/gradio_api/file={outputs / 'notes.txt'}",
        f"/gradio_api/file={outputs / 'server.log'}",
        f"/gradio_api/file={site.data / 'config.json'}",
        f"/gradio_api/file={site.data / 'styles.csv'}",
        "/gradio_api/file=/etc/passwd",
        f"/gradio_api/file={secret}",
        # traversal out of the outputs: plain, percent-encoded, double-encoded, mixed
        f"/gradio_api/file={outputs}/txt2img-images/../../outside/secret.png",
        f"/gradio_api/file={outputs}/%2e%2e/outside/secret.png",
        f"/gradio_api/file={outputs}/%2E%2E%2Foutside%2Fsecret.png",
        f"/gradio_api/file={outputs}/%252e%252e/outside/secret.png",
        f"/gradio_api/file={outputs}/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
        # links inside the outputs that lead out of them, or to what is not an image
        f"/gradio_api/file={outputs / 'link-to-passwd.png'}",
        f"/gradio_api/file={outputs / 'link-to-outside.png'}",
        f"/gradio_api/file={outputs / 'images-link' / 'secret.png'}",
        f"/gradio_api/file={outputs / 'history-link.png'}",
        # a URL the server would fetch for the caller, and the proxy route
        f"/gradio_api/file=http://127.0.0.1:{server.port}/gradio_api/info",
        "/gradio_api/proxy=https://example.hf.space/file=x.png",
    ]
    for target in refused:
        status, body, _ = raw_get(server, target)
        assert status == 403, (target, status, body[:80])
        assert b"root:" not in body and b"private" not in body and b"SQLite" not in body
        assert secret.read_bytes() not in body
    # Gradio's other file-serving routes (its own static files) do not climb out either
    for target in ("/static/..%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd", "/static/../../../../etc/passwd",
                   "/assets/..%2f..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
                   "/gradio_api/custom_component/x/client/..%2f..%2f..%2f..%2fetc/passwd"):
        status, body, _ = raw_get(server, target)
        assert status >= 400 and b"root:" not in body, (target, status)


def test_pages_uploads_are_served_only_as_images_or_json(site):
    """Gradio's own folder (uploads, what the page sends back) serves what the page uses."""
    server = site.server
    files = [("files", ("photo.png", png(site.root / "up" / "photo.png").read_bytes(), "image/png")),
             ("files", ("page.html", b"<script>alert(1)</script>", "text/html")),
             ("files", ("export.json", b'{"format": "x"}', "application/json"))]
    uploaded = requests.post(f"{server.url}/gradio_api/upload", files=files, timeout=30)
    assert uploaded.status_code == 200
    photo, page, export = uploaded.json()
    assert raw_get(server, f"/gradio_api/file={photo}")[0] == 200
    assert raw_get(server, f"/gradio_api/file={export}")[0] == 200
    status, body, _ = raw_get(server, f"/gradio_api/file={page}")
    assert status == 403 and b"<script>" not in body


# ---------------------------------------------------------------- history import (the page's code path)


def history_tab(site):
    """The History tab's behaviour (HistoryTab, what its Import button calls) over the server's
    history database, from the modules the extension loaded when the page was built."""
    store_module = sys.modules["sd_extension_prompt_history_store"]
    ui_module = sys.modules["sd_extension_prompt_history_ui"]
    store = store_module.HistoryStore(site.outputs / store_module.DB_NAME)
    return ui_module.HistoryTab(store, store_module), store, store_module


def export_document(prompt: str, path: str | None) -> dict:
    return {"format": "sd-studio-prompt-history", "version": 1, "entries": [{
        "uid": f"uid-{prompt}", "created": 1700000000.0, "finished": 1700000001.0, "duration": 1.0,
        "kind": "txt2img", "status": "done", "prompt": prompt, "negative_prompt": "", "params": {"prompt": prompt},
        "model_name": None, "model_hash": None, "seed": 1, "favourite": False,
        "images": [{"position": 0, "seed": 1, "subseed": None, "path": path, "infotext": prompt,
                    "created": 1700000000.5}]}]}


def test_history_import_refuses_paths_outside_the_outputs(site):
    tab, store, store_module = history_tab(site)
    secret = png(site.outside / "history-secret.png", colour=(250, 250, 0), size=(32, 32))
    inside = png(site.outputs / "txt2img-images" / "2024-02-03" / "00002-1.png", colour=(0, 0, 250), size=(32, 32))
    before = store.count()
    for index, path in enumerate([str(secret), "../outside/history-secret.png", "/etc/passwd",
                                  str(site.outputs / "history.sqlite3")]):
        upload = site.root / f"import-{index}.json"
        upload.write_text(json.dumps(export_document(f"evil {index}", path)), encoding="utf-8")
        message = tab.import_file(str(upload), "skip")
        assert message.startswith("**Not imported:**") and "images\\[0\\]" in message, message
        assert store.count() == before
    good = site.root / "import-good.json"
    good.write_text(json.dumps(export_document("fine", str(inside))), encoding="utf-8")
    assert tab.import_file(str(good), "skip") == "Imported: 1 added, 0 replaced, 0 already here."

    # an entry recorded with an outside path before imports were checked: never shown or sent
    old = store.add_entry({"prompt": "recorded earlier", "status": "done", "seed": 1},
                          [{"seed": 1, "path": str(secret), "infotext": "recorded earlier"}])
    stored = store.get(old)["images"][0]["path"]
    thumbnail = tab.thumb(stored)
    assert thumbnail.getpixel((1, 1)) == (64, 64, 64)  # the "missing" square, not the secret's yellow
    assert store.send_to(old)["image"] is None
    assert "1 image file(s) missing" in tab.entry_view(old)[4]
    fine = store.search("fine")["entries"][0]
    assert tab.thumb(fine["images"][0]["path"]).getpixel((1, 1)) == (0, 0, 250)
    assert store.send_to(fine["id"])["image"] == str(inside)
    # the page's send-to takes a picture path from a hidden text box: only served images pass
    assert site.studio.outputs.served_image(str(secret)) is None
    assert site.studio.outputs.served_image(str(site.outputs / "history.sqlite3")) is None
    assert site.studio.outputs.served_image(str(inside)) == str(inside)


# ---------------------------------------------------------------- super-resolution batch folders


def test_upscale_batch_reads_and_writes_only_allowed_folders(site):
    studio = site.studio
    private = site.outside / "private-pictures"
    png(private / "p.png", size=(8, 8))
    batch_in = png(site.outputs / "batch-in" / "q.png", size=(8, 6)).parent
    for input_dir, output_dir, named in [(str(private), "", private),
                                         (str(batch_in), str(site.outside / "written"), site.outside / "written"),
                                         (f"{batch_in}/../../outside/private-pictures", "", "private-pictures")]:
        with pytest.raises(gr.Error) as refused:
            studio.superres.upscale("Batch from folder", None, input_dir, output_dir, "Lanczos", "Scale by", 2, 0, 0)
        message = refused.value.message
        assert str(named) in message and "outside the allowed folders" in message
        assert str(site.outputs) in message and "--allowed-dir" in message
    assert not (site.outside / "written").exists()
    _, _, _, items = studio.superres.upscale("Batch from folder", None, str(batch_in), str(site.outputs / "batch-out"),
                                    "Lanczos", "Scale by", 2, 0, 0)
    with Image.open(items[0]["path"]) as image:
        assert image.size == (16, 12) and Path(items[0]["path"]).parent == site.outputs / "batch-out"


def test_allowed_dirs_go_from_launch_py_to_the_page(site, monkeypatch, tmp_path):
    import launch

    import app.server as server
    from fake_engine import engine_class
    from launch_args import launch_args

    args = launch.build_parser().parse_args(["--allowed-dir", str(tmp_path / "a"), "--allowed-dir", "~/b"])
    assert args.allowed_dir == [tmp_path / "a", Path("~/b")]
    assert launch.build_parser().parse_args([]).allowed_dir is None

    made = []
    monkeypatch.setattr(server, "create_app", lambda engine, **kw: made.append(kw) or "app")
    monkeypatch.setattr(server, "run_uvicorn", lambda app, host, port: 0)
    monkeypatch.setattr("core.engine.Engine", engine_class(tmp_path, [], checkpoints=[]))
    base = dict(device="cpu", precision="fp32", ckpt_dir=tmp_path / "ck", outdir=tmp_path / "out", port=7999,
                ui_settings_file=tmp_path / "config.json")
    assert server.serve(launch_args(**base, allowed_dir=args.allowed_dir)) == 0
    assert made[-1]["allowed_dirs"] == [tmp_path / "a", Path.home() / "b"]
    assert server.serve(launch_args(**base, allowed_dir=None)) == 0
    assert made[-1]["allowed_dirs"] == [(tmp_path / "out").resolve(), ROOT / "inputs"]

    monkeypatch.undo()
    folder = tmp_path / "studio-inputs"
    png(folder / "x.png", size=(4, 4))
    app = create_app(site.engine, api=False, ui=True, options_path=site.data / "config.json",
                     allowed_paths=[site.outputs], allowed_dirs=[folder])
    studio = app.state.page.studio
    assert studio.superres.allowed_dirs == [folder]
    with pytest.raises(gr.Error, match="outside the allowed folders"):
        studio.superres.upscale("Batch from folder", None, str(site.outputs / "batch-in"), "", "Lanczos", "Scale by", 2, 0, 0)
    with LiveServer(app) as server:
        # through the page's Upscale button: the results reach the browser (as Gradio's copies),
        # while the allowed folder itself is not served
        sd_defaults = [False, "", "", 0.3, 20, 7.0, "Euler", -1, 512, 64]
        event, (gallery, *_) = gradio_call(server, "upscale", ["Batch from folder", None, str(folder),
                                                               str(folder / "out"), "Lanczos", "Scale by", 2, 0, 0,
                                                               *sd_defaults])
        assert event == "complete"
        made = folder / "out" / "00000-x.png"
        with Image.open(made) as image:
            assert image.size == (8, 8)
        shown = gallery[0]["image"]["url"]
        assert requests.get(shown, timeout=30).content == made.read_bytes()
        assert raw_get(server, f"/gradio_api/file={made}")[0] == 403


# ---------------------------------------------------------------- model download


class ModelFiles(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    asked: list[str] = []

    def do_GET(self):  # noqa: N802
        ModelFiles.asked.append(self.path)
        body = ModelFiles.files.get(self.path)
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def model_host():
    ModelFiles.files, ModelFiles.asked = {}, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ModelFiles)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def call_download(site, current: str | None) -> tuple[str, object]:
    """Press the page's Download button through Gradio's HTTP API, with the inputs its
    endpoint declares (any other than the selection are left empty); returns (notice, the
    checkpoint dropdown's value)."""
    server = site.server
    info = requests.get(f"{server.url}/gradio_api/info", timeout=30).json()
    parameters = info["named_endpoints"]["/download_model"]["parameters"]
    data = [current if p["parameter_name"] == "current" else "" for p in parameters]
    event, result = gradio_call(server, "download_model", data)
    assert event == "complete", event
    notice, dropdown = result
    return notice, dropdown.get("value") if isinstance(dropdown, dict) else dropdown


def gradio_call(server, api_name: str, data: list) -> tuple[str, list | None]:
    """Call a page event through Gradio's HTTP API: ("complete", its outputs) or ("error", None)."""
    started = requests.post(f"{server.url}/gradio_api/call/{api_name}", json={"data": data}, timeout=30)
    assert started.status_code == 200, started.text
    stream = requests.get(f"{server.url}/gradio_api/call/{api_name}/{started.json()['event_id']}", timeout=120)
    event, result = None, None
    for line in stream.text.splitlines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event == "complete":
            result = json.loads(line.split(":", 1)[1])
    return event, result


def test_download_takes_its_url_from_the_settings_only(site, model_host):
    """The Gradio endpoint used to take any URL (and sha256) from the request."""
    ModelFiles.files["/configured.safetensors"] = b"\0" * 64
    ModelFiles.files["/evil.safetensors"] = b"\1" * 64
    site.studio.settings.update({"model_download_url": f"{model_host}/configured.safetensors",
                                 "model_download_sha256": ""})
    ModelFiles.asked.clear()
    gradio_call(site.server, "download_model", [f"{model_host}/evil.safetensors", "", None])
    assert "/evil.safetensors" not in ModelFiles.asked
    assert not (site.engine.ckpt_dir / "evil.safetensors").exists()


def test_a_download_that_does_not_load_is_not_selected(site, model_host):
    ModelFiles.files["/junk.safetensors"] = b"\0" * 64  # what a wrong URL or a login page gives
    site.studio.settings.update({"model_download_url": f"{model_host}/junk.safetensors", "model_download_sha256": ""})
    previous = site.engine.list_checkpoints()[-1]
    notice, selected = call_download(site, previous)
    assert (site.engine.ckpt_dir / "junk.safetensors").is_file()
    assert selected == previous
    assert "junk.safetensors" in notice and "does not load" in notice and f"{previous}** stays selected" in notice
    assert site.engine.loaded is None or site.engine.loaded.name != "junk"


def test_a_download_with_the_wrong_sha256_is_deleted_and_not_selected(site, model_host):
    ModelFiles.files["/tampered.safetensors"] = b"\2" * 64
    site.studio.settings.update({"model_download_url": f"{model_host}/tampered.safetensors",
                                 "model_download_sha256": hashlib.sha256(b"the real file").hexdigest()})
    previous = site.engine.list_checkpoints()[-1]
    notice, selected = call_download(site, previous)
    assert "checksum mismatch" in notice and selected in (previous, None)
    assert not list(site.engine.ckpt_dir.glob("tampered.safetensors*"))


def test_a_download_that_loads_is_selected(site, model_host, tiny_checkpoints):
    data = Path(tiny_checkpoints["safetensors"]).read_bytes()
    ModelFiles.files["/tiny-download.safetensors"] = data
    site.studio.settings.update({"model_download_url": f"{model_host}/tiny-download.safetensors",
                                 "model_download_sha256": hashlib.sha256(data).hexdigest()})
    notice, selected = call_download(site, site.engine.list_checkpoints()[-1])
    assert selected == "tiny-download.safetensors" and "loaded" in notice and "selected" in notice
    assert site.engine.loaded is not None and site.engine.loaded.path.name == "tiny-download.safetensors"
    site.engine.unload()
