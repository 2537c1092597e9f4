"""Device jobs of the API: one worker thread runs them one at a time, each tied to its client's
connection (a client that leaves drops its queued job and stops its running one), and
``JobState`` holds what /progress reports of the running one."""
from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import threading
import time
from typing import Any, Callable

from fastapi import Request

from app.api.errors import ApiError
from app.api.images import encode_png, latent_preview

log = logging.getLogger(__name__)


class JobState:
    """A1111's shared.state for API jobs: set by the worker thread, read by /progress."""

    def __init__(self):
        self._lock = threading.Lock()
        self.job = ""
        self.job_count = 0
        self.job_no = 0
        self.sampling_step = 0
        self.sampling_steps = 0
        self.interrupted = False
        self.skipped = False
        self.job_timestamp = "0"
        self.time_start = 0.0
        self.textinfo: str | None = None
        self.latent = None
        self._preview_key = None
        self._preview: str | None = None
        self._serial = 0

    def begin(self, job: str, job_count: int = 1, steps: int = 0) -> None:
        with self._lock:
            self._serial += 1
            self.job, self.job_count, self.job_no = job, max(job_count, 1), 0
            self.sampling_step, self.sampling_steps = 0, steps
            self.interrupted = self.skipped = False
            self.job_timestamp = dt.datetime.now().strftime("%Y%m%d%H%M%S")
            self.time_start = time.time()
            self.latent, self._preview_key, self._preview = None, None, None

    def end(self) -> None:
        with self._lock:
            self.job, self.job_count, self.job_no = "", 0, 0
            self.sampling_step = self.sampling_steps = 0
            self.latent, self._preview_key, self._preview = None, None, None

    def step(self, step: int, steps: int, job_no: int, job_count: int | None = None, latent=None) -> None:
        with self._lock:
            self.sampling_step, self.sampling_steps, self.job_no = step, steps, job_no
            if job_count:
                self.job_count = job_count
            if latent is not None:
                self.latent = latent

    def flag(self, name: str) -> None:
        with self._lock:
            if self.job_count:
                setattr(self, name, True)

    def as_dict(self) -> dict:
        with self._lock:
            return {
                "skipped": self.skipped, "interrupted": self.interrupted, "stopping_generation": False,
                "job": self.job, "job_count": self.job_count, "job_timestamp": self.job_timestamp,
                "job_no": self.job_no, "sampling_step": self.sampling_step, "sampling_steps": self.sampling_steps,
            }

    def progress(self) -> tuple[float, float]:
        """(fraction done, seconds left) the way A1111 estimates them."""
        with self._lock:
            if self.job_count == 0:
                return 0.0, 0.0
            done = 0.01 + self.job_no / self.job_count
            if self.sampling_steps > 0:
                done += self.sampling_step / self.sampling_steps / self.job_count
            elapsed = time.time() - self.time_start
            return min(done, 1.0), max(0.0, elapsed / done - elapsed)

    def preview(self) -> str | None:
        with self._lock:
            latent, key = self.latent, (self._serial, self.job_no, self.sampling_step)
            if latent is None:
                return None
            if key == self._preview_key:
                return self._preview
        image = latent_preview(latent)
        encoded = encode_png(image) if image is not None else None
        with self._lock:
            self._preview_key, self._preview = key, encoded
        return encoded


class ClientGone(ApiError):
    """The client closed its connection before its job ended; nobody reads this answer."""

    def __init__(self):
        super().__init__(499, "client closed the request")  # 499: nginx's "client closed request"


async def until_disconnected(request: Request) -> None:
    """Returns once the client of ``request`` has closed its connection. Only for a request
    whose body has been read (FastAPI reads it before the route runs): the server's ``receive``
    then has nothing left to give but ``http.disconnect``."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class DeviceQueue:
    """One worker thread: device jobs run one at a time, in arrival order."""

    def __init__(self, state: JobState):
        self.state = state
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdapi-job")

    async def run(self, job: str, fn: Callable[[], Any], job_count: int = 1, steps: int = 0,
                  client: Request | None = None, gone: threading.Event | None = None) -> Any:
        """``fn()`` on the worker. With ``client``: once it disconnects, ``gone`` is set and
        ClientGone raised at once; a job still waiting in the queue then never starts, and a
        running one is for ``fn`` itself to stop (it sees ``gone``: only it can tell that the
        engine is running its work and not another client's)."""
        gone = gone if gone is not None else threading.Event()

        def wrapped():
            if gone.is_set():  # its client left while it waited: the cancel below came too late
                raise ClientGone()
            self.state.begin(job, job_count, steps)
            try:
                return fn()
            finally:
                self.state.end()

        future = self._executor.submit(wrapped)
        result = asyncio.wrap_future(future)
        watcher = asyncio.ensure_future(until_disconnected(client)) if client is not None else None
        try:
            if watcher is not None:
                await asyncio.wait({result, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if not result.done():
                    gone.set()
                    if future.cancel():
                        log.info("%s: client gone, the queued job is dropped", job)
                    else:
                        log.info("%s: client gone, the running job is stopped", job)
                    raise ClientGone()
            return await result
        except asyncio.CancelledError:
            gone.set()
            future.cancel()  # the client went away: drop the job if it has not started
            raise
        finally:
            if watcher is not None:
                watcher.cancel()

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
