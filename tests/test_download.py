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
