"""Resumable, checksummed downloads against a local HTTP server the test starts."""
import hashlib
import http.server
import threading

import pytest

from core.download import download, network_reachable
from core.errors import EngineError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Handler(http.server.BaseHTTPRequestHandler):
    cut_after = None  # bytes to send before dropping the connection (first request only)
    honour_range = True
    requests = []

    def do_GET(self):  # noqa: N802
        Handler.requests.append(self.headers.get("Range"))
        start = 0
        if self.headers.get("Range") and Handler.honour_range:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if Handler.cut_after is not None:
            self.wfile.write(body[: Handler.cut_after])
            Handler.cut_after = None
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    Handler.cut_after, Handler.honour_range, Handler.requests = None, True, []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/model.safetensors"
    httpd.shutdown()


def test_download_with_progress_and_checksum(server, tmp_path):
    seen = []
    path = download(server, tmp_path / "model.safetensors", hashlib.sha256(PAYLOAD).hexdigest(), progress=lambda p: seen.append(p.done))
    assert path.read_bytes() == PAYLOAD and not (tmp_path / "model.safetensors.part").exists()
    assert seen[-1] == len(PAYLOAD) and seen == sorted(seen)


def test_interrupted_transfer_resumes(server, tmp_path):
    Handler.cut_after = 300_000
    target = tmp_path / "model.safetensors"
    with pytest.raises(EngineError, match="interrupted after .* run it again to resume"):
        download(server, target, hashlib.sha256(PAYLOAD).hexdigest())
    part = tmp_path / "model.safetensors.part"
    assert 0 < part.stat().st_size < len(PAYLOAD) and not target.exists()
    download(server, target, hashlib.sha256(PAYLOAD).hexdigest())
    assert target.read_bytes() == PAYLOAD
    assert Handler.requests[-1] == "bytes=300000-"  # the second request asked only for the rest


def test_checksum_mismatch_deletes_the_partial_file(server, tmp_path):
    target = tmp_path / "model.safetensors"
    with pytest.raises(EngineError, match="checksum mismatch.*partial file was deleted"):
        download(server, target, "0" * 64)
    assert not target.exists() and not (tmp_path / "model.safetensors.part").exists()


def test_server_without_range_support_starts_over(server, tmp_path):
    (tmp_path / "model.safetensors.part").write_bytes(b"garbage" * 10)
    Handler.honour_range = False
    download(server, tmp_path / "model.safetensors", hashlib.sha256(PAYLOAD).hexdigest())
    assert (tmp_path / "model.safetensors").read_bytes() == PAYLOAD


def test_never_overwrites_and_refuses_other_schemes(server, tmp_path):
    existing = tmp_path / "model.safetensors"
    existing.write_bytes(b"mine")
    with pytest.raises(EngineError, match="already exists"):
        download(server, existing)
    assert existing.read_bytes() == b"mine"
    with pytest.raises(EngineError, match="only http"):
        download("file:///etc/passwd", tmp_path / "x")


def test_offline_is_detected_quickly():
    assert not network_reachable("http://127.0.0.1:9/nothing", timeout=1)


# --- first run: the page's offer and the demo model ------------------------------------------

def first_run_engine(root):
    """An engine whose only checkpoint is the bundled demo (the first run's case)."""
    from core.demo import DEMO_NAME
    from fake_engine import FakeEngine

    return FakeEngine(root, checkpoints=[DEMO_NAME])


def test_first_run_offer_downloads_into_the_checkpoint_folder(server, tmp_path):
    from app.first_run import ModelOffer

    probes = []
    settings = {"model_download_url": server, "model_download_sha256": hashlib.sha256(PAYLOAD).hexdigest()}
    engine = first_run_engine(tmp_path)
    offer = ModelOffer(engine, settings, reachable=lambda url: probes.append(url) or True)
    assert offer.needed() and "No checkpoint yet" in offer.notice()
    seen = []
    name = offer.fetch(progress=lambda p: seen.append(p.fraction))
    assert name == "model.safetensors" and (engine.ckpt_dir / name).read_bytes() == PAYLOAD
    assert seen[-1] == 1.0
    engine.checkpoints.insert(0, name)
    assert offer.try_load(name) is None and engine.loaded.name == "model"
    assert offer.try_load("other.safetensors") == "checkpoint: 'other.safetensors' not found in " + str(engine.ckpt_dir)
    assert not offer.needed() and offer.notice() == ""
    assert len(probes) == 1  # the network is asked once per process


def test_first_run_offline_says_so_once_and_keeps_the_demo(tmp_path):
    from app.first_run import ModelOffer

    probes = []
    offer = ModelOffer(first_run_engine(tmp_path), {}, reachable=lambda url: probes.append(url) or False)
    first = offer.notice()
    assert first.startswith("Offline:") and "demo model" in first
    assert offer.notice() == first and len(probes) == 1
    with pytest.raises(EngineError, match="cannot be reached"):
        offer.fetch()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("online", [False, True])
def test_offline_the_download_panel_folds_and_its_button_stops_calling(tmp_path, monkeypatch, online):
    """Open with an orange button while nothing could be downloaded, the panel pushed the results
    below the fold; offline it folds to its header when the page fills its notice."""
    from types import SimpleNamespace

    import gradio as gr

    from app.first_run import ModelOffer, download_panel

    monkeypatch.setattr(ModelOffer, "online", lambda self, url: online)
    models = SimpleNamespace(engine=first_run_engine(tmp_path), settings={})
    with gr.Blocks() as demo:
        notice, offer = download_panel(models, gr.Dropdown())
    fold = next(block_fn.fn for block_fn in demo.fns.values() if block_fn.name == "fold_when_offline")
    panel, button = fold(offer.notice())
    assert offer.offline() is not online
    assert panel.open is online and button.variant == ("primary" if online else "secondary")


@pytest.mark.parametrize("url, why", [
    ("ftp://example.com/model.safetensors", "only http"),
    ("http://127.0.0.1:9/notes.txt", "must name a .safetensors or .ckpt"),
    ("http://127.0.0.1:9/demo-shapes.safetensors", "not an acceptable"),
])
def test_first_run_refuses_odd_urls(tmp_path, url, why):
    from app.first_run import ModelOffer

    engine = first_run_engine(tmp_path)
    offer = ModelOffer(engine, {"model_download_url": url}, reachable=lambda url: True)
    with pytest.raises(EngineError, match=why):
        offer.fetch()
    assert not list(tmp_path.iterdir())
    # An encoded path in the URL never leaves the checkpoint folder: only the last name counts.
    assert offer.target("http://h/..%2F..%2Fevil.safetensors") == engine.ckpt_dir / "evil.safetensors"


def test_demo_is_listed_last_labelled_and_default_only_alone(tmp_path):
    from core.demo import DEMO_NAME, label, with_demo

    demo_file = tmp_path / "bundled" / DEMO_NAME
    assert with_demo(["a.safetensors"], demo_file) == ["a.safetensors"]  # no file, no entry
    demo_file.parent.mkdir()
    demo_file.write_bytes(b"x")
    assert with_demo([], demo_file) == [DEMO_NAME]
    assert with_demo([DEMO_NAME, "b.ckpt", "a.safetensors"], demo_file) == ["b.ckpt", "a.safetensors", DEMO_NAME]
    assert "demo model" in label(DEMO_NAME) and label("a.safetensors") == "a.safetensors"
