"""Helpers of the integration tests (a module, not conftest, so tests can import them)."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from testkit import free_port, wait_for

TERMINAL = ("succeeded", "failed", "canceled")
REPO = Path(__file__).resolve().parents[2]
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


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
    """A private redis-server on loopback; with ``directory`` it keeps an AOF there (fsync always),
    as compose does, so records and messages survive a restart on the same port."""

    def __init__(self, port: int | None = None, directory: Path | str | None = None) -> None:
        self.port, self.dir, self.proc = port or free_port(), directory, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (scripts/test.sh installs it)")
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.dir is None:
            args += ["--appendonly", "no"]
        else:
            args += ["--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            wait_for(lambda: _safe(client.ping), timeout=10)
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5)
            self.proc = None


class MotoS3:
    """moto's S3 server on loopback; its data lives in this process, so a restart keeps the objects."""

    def __init__(self) -> None:
        self.port, self.server = free_port(), None
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3:
        from moto.server import ThreadedMotoServer

        for key, value in AWS_ENV.items():
            os.environ.setdefault(key, value)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()
        return self

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=name)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


def celery_worker_args(hostname: str, pool: str = "solo") -> list[str]:
    """``celery worker`` for one job at a time on the project's queue, quiet on the broker."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", f"--pool={pool}",
        "--concurrency=1", "--queues=qalign", "--without-gossip", "--without-mingle",
        "--without-heartbeat", f"--hostname={hostname}@%h", "--loglevel=INFO",
    ]  # fmt: skip


def worker_env(settings_env: dict[str, str]) -> dict[str, str]:
    """The test process's environment plus the service settings, with the repository importable."""
    env = {**os.environ, **settings_env, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


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
