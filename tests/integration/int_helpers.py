"""Helpers of the integration tests (a module, not conftest, so tests can import them)."""

from __future__ import annotations

import io
import shutil
import signal
import socket
import subprocess
import time

import pytest
from PIL import Image

TERMINAL = ("succeeded", "failed", "canceled")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def poll(client, job_id: str, statuses=TERMINAL, timeout: float = 180.0) -> dict:
    def check():
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    return wait_for(check, timeout, interval=0.2)


def submit(client, photos: tuple[bytes, bytes], **fields) -> dict:
    files = {
        "structure": ("cat.png", photos[0], "image/png"),
        "appearance": ("coffee.jpg", photos[1], "image/jpeg"),
    }
    response = client.post("/transfer", files=files, data={k: str(v) for k, v in fields.items()})
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/jobs/{response.json()['id']}"
    return response.json()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


#: A short run of the tiny model (a few seconds on CPU).
FAST = {"steps": 10, "skip_steps": 3}
#: A run long enough to be caught while running (hundreds of steps), for cancel tests.
SLOW = {"steps": 400, "skip_steps": 0}


class RedisServer:
    def __init__(self, port: int) -> None:
        self.port, self.proc = port, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        wait_for(lambda: _safe(client.ping), timeout=10)
        client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5)
            self.proc = None


def _safe(fn) -> bool:
    try:
        return bool(fn())
    except Exception:
        return False


def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL: never leaves a process behind."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
