"""Helpers of the integration tests (a module, not conftest, so tests can import them)."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import httpx
import testkit
from PIL import Image
from testkit import TERMINAL, RedisServer, free_port, stop_process, wait_for  # noqa: F401 (re-exported)

REPO = Path(__file__).resolve().parents[2]
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def poll(client, job_id: str, statuses=TERMINAL, timeout: float = 180.0) -> dict:
    """testkit.poll with the integration tests' wide deadline (real model, busy machine)."""
    return testkit.poll(client, job_id, statuses=statuses, timeout=timeout)


def submit(client, photos: tuple[bytes, bytes], **fields) -> dict:
    """testkit.submit that must be accepted; the job object."""
    response = testkit.submit(client, photos, **fields)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/jobs/{response.json()['id']}"
    return response.json()


def submit_many(client, structure: bytes, appearances: list[bytes], **fields) -> dict:
    """POST /transfer with the ``appearance`` part repeated, in order; must be accepted."""
    files = [("structure", ("s.png", structure, "image/png"))]
    files += [("appearance", (f"a{k}.png", image, "image/png")) for k, image in enumerate(appearances)]
    response = client.post("/transfer", files=files, data={k: str(v) for k, v in fields.items()})
    assert response.status_code == 202, response.text
    return response.json()


def crop_to(image: Image.Image, ratio: tuple[int, int]) -> Image.Image:
    """The largest centre crop of ``image`` with width:height = ``ratio``."""
    rw, rh = ratio
    width = min(image.width, image.height * rw // rh)
    height = width * rh // rw
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def assert_shape_kept(size: tuple[int, int], source: tuple[int, int], longer: int) -> None:
    """``size`` is ``source``'s shape with the longer side ``longer`` and the shorter one the
    aspect-scaled length to the pixel (the whole structure at its exact aspect, issue 26)."""
    width, height = size
    assert max(width, height) == longer, (size, longer)
    assert (width >= height) == (source[0] >= source[1]), ("orientation", size, source)
    scaled = longer * min(source) / max(source)
    assert abs(min(width, height) - scaled) <= 0.5, (size, source, scaled)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


#: A short run of the tiny model (a few seconds on CPU).
#: The webhook secret of the distributed deployment the tests start (Standard Webhooks whsec_ form).
WEBHOOK_SECRET = "whsec_aW50ZWdyYXRpb24tdGVzdC1zZWNyZXQ="
FAST = {"steps": 10, "skip_steps": 3}
#: A run long enough to be caught while running (hundreds of steps), for cancel tests.
SLOW = {"steps": 400, "skip_steps": 0}


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


def serve_command(port: int) -> list[str]:
    """`qalign serve` (the embedded service) on 127.0.0.1:``port``."""
    return [sys.executable, "-m", "qalign_cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)]


def serve_env(data_dir, model: str) -> dict[str, str]:
    """The embedded service's environment: ``model`` on the CPU, data in ``data_dir``, no Redis or S3."""
    env = {
        **os.environ,
        "QALIGN_MODEL": model,
        "QALIGN_DEVICE": "cpu",
        "QALIGN_DATA_DIR": str(data_dir),
        "QALIGN_PROGRESS_INTERVAL": "0.2",
        "QALIGN_CANCEL_CHECK_INTERVAL": "0.1",
        "PYTHONUNBUFFERED": "1",
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("QALIGN_REDIS_URL", None)
    env.pop("QALIGN_S3_BUCKET", None)
    return env


def service_ready(client: httpx.Client) -> bool:
    """The service at ``client`` answers /readyz with 200."""
    try:
        return client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False
