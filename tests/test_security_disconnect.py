"""A job whose HTTP client has gone away is not run for nobody (issue #14): a disconnected
client's queued job is dropped, its running job interrupted, and no other client's job is
touched. Against a live server over tiny models, with raw sockets that can be closed mid-job."""
from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from test_api import engine, models_dir, serve  # noqa: F401 - fixtures: a live server over tiny models

JOB = {"seed": 1, "width": 64, "height": 64, "sampler_name": "Euler", "save_images": False, "send_images": True}


class Recorder:
    """Wraps engine.txt2img: which prompts started, and how each ended."""

    def __init__(self, engine):
        self.engine = engine
        self.real = engine.txt2img
        self.started: list[str] = []
        self.ended: dict[str, tuple[int, bool, float]] = {}  # prompt -> (images, interrupted, time)
        self.lock = threading.Lock()

    def __call__(self, params, *args, **kwargs):
        with self.lock:
            self.started.append(params.prompt)
        results = self.real(params, *args, **kwargs)
        with self.lock:
            self.ended[params.prompt] = (len(results), bool(self.engine.flags.interrupted), time.monotonic())
        return results


def open_job(server, body: dict, route: str = "txt2img") -> socket.socket:
    """POST /sdapi/v1/ROUTE on a raw socket, without reading the answer (to close it mid-job)."""
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /sdapi/v1/%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % (route.encode(), server.port, len(data)) + data)
    return sock


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {seconds}s waiting for {what}")


def progress(server) -> dict:
    return server.get("/sdapi/v1/progress?skip_current_image=true").json()["state"]


@pytest.fixture
def watched(engine, serve, monkeypatch):
    """(server, recorder, submitted): a live server whose engine's txt2img calls are recorded,
    and the number of jobs its device queue has been given so far."""
    server = serve()
    recorder = Recorder(engine)
    monkeypatch.setattr(engine, "txt2img", recorder)
    queue = server.app.state.sdapi.queue
    submitted = []
    real_submit = queue._executor.submit
    monkeypatch.setattr(queue._executor, "submit", lambda fn: submitted.append(fn) or real_submit(fn))
    return server, recorder, submitted


def post_in_thread(server, body: dict) -> tuple[threading.Thread, dict]:
    answer: dict = {}
    thread = threading.Thread(target=lambda: answer.update(response=server.post("/sdapi/v1/txt2img", body)))
    thread.start()
    return thread, answer


def test_a_running_job_stops_soon_after_its_client_leaves_and_the_next_client_is_served(watched):
    server, recorder, submitted = watched
    leaving = open_job(server, {**JOB, "prompt": "client leaves", "steps": 400, "n_iter": 8})
    wait_for(lambda: "client leaves" in recorder.started and progress(server)["sampling_step"] > 2, 60,
             "the first job to sample")
    staying, answer = post_in_thread(server, {**JOB, "prompt": "client stays", "steps": 3, "n_iter": 2})
    wait_for(lambda: len(submitted) == 2, 10, "the second job to be queued")

    closed = time.monotonic()
    leaving.close()
    staying.join(30)
    assert not staying.is_alive(), "the connected client's job waited for a job nobody wants"
    images, interrupted, ended = recorder.ended["client leaves"]
    assert interrupted and images < 8 and ended - closed < 5, (images, interrupted, ended - closed)
    response = answer["response"]
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 2, recorder.ended
    assert recorder.ended["client stays"][:2] == (2, False)  # not hit by the other client's interrupt
    assert progress(server)["interrupted"] is False


def test_a_queued_job_of_a_gone_client_never_starts_and_the_running_one_is_untouched(watched):
    server, recorder, submitted = watched
    running, answer = post_in_thread(server, {**JOB, "prompt": "connected and running", "steps": 40,
                                              "n_iter": 4})
    wait_for(lambda: "connected and running" in recorder.started and progress(server)["sampling_step"] > 0, 60,
             "the connected job to sample")
    leaving = open_job(server, {**JOB, "prompt": "queued, client leaves", "steps": 400, "n_iter": 8})
    wait_for(lambda: len(submitted) == 2, 10, "the second job to be queued")
    leaving.close()

    running.join(120)
    assert not running.is_alive()
    response = answer["response"]
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 4
    assert recorder.ended["connected and running"][:2] == (4, False)
    time.sleep(1.0)  # time enough for a wrongly kept job to start
    assert recorder.started == ["connected and running"]
    assert progress(server)["job_count"] == 0  # the worker is idle


def test_an_upscaling_job_stops_at_the_next_tile_after_its_client_leaves(serve, monkeypatch):
    """extra-batch-images: the picture being upscaled stops at its next tile, the pictures after
    it are never started."""
    import base64
    import io

    from PIL import Image

    import core.upscaling.extras

    real = core.upscaling.extras.run_extras
    tiles: list[float] = []
    pictures: list[float] = []

    def slow_upscale(image, job, progress=None, **kwargs):
        """Forty tiles of 50 ms each before the real (instant) upscale job: a picture takes 2 s."""
        pictures.append(time.monotonic())
        for done in range(40):
            time.sleep(0.05)
            tiles.append(time.monotonic())
            progress(done + 1, 40)
        return real(image, job, progress=progress, **kwargs)

    monkeypatch.setattr(core.upscaling.extras, "run_extras", slow_upscale)
    server = serve()
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, "PNG")
    picture = base64.b64encode(buffer.getvalue()).decode()
    body = {"imageList": [{"data": picture, "name": f"p{i}.png"} for i in range(8)], "upscaler_1": "Lanczos",
            "upscaling_resize": 2}
    leaving = open_job(server, body, route="extra-batch-images")
    wait_for(lambda: len(tiles) > 3, 30, "the first tiles")
    closed = time.monotonic()
    leaving.close()
    wait_for(lambda: progress(server)["job_count"] == 0, 10, "the worker to be idle")
    assert len(pictures) == 1, "no picture after the client left is started"
    assert tiles[-1] - closed < 1.5 and len(tiles) < 40, (len(tiles), tiles[-1] - closed)
    monkeypatch.setattr(core.upscaling.extras, "run_extras", real)
    answer = server.post("/sdapi/v1/extra-batch-images", {**body, "imageList": body["imageList"][:2]})
    assert answer.status_code == 200 and len(answer.json()["images"]) == 2  # the next client is served
