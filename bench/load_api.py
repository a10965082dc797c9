"""Load test of the HTTP API itself: POST /transfer with two 512x512 PNGs, then polling GET /jobs/{id}.

``python -m bench.load_api [--users 16] [--submissions 300] [--polls 3] [--duration 120]``

Starts everything it needs on free loopback ports and stops it at the end: redis-server, moto's S3
server, one Celery worker (tiny model, ``nice 19``, one thread: it only has to keep the queue moving)
and the API (``qalign serve``: uvicorn, one process). The queue limit is raised for the run so the
API's own throughput is measured, not the 429 path. Each virtual user loops: submit, then poll the
job ``--polls`` times. Bounded by ``--submissions`` and ``--duration``; prints requests/second and
latency percentiles per endpoint, and the same as JSON with ``--json PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
AWS_ENV = {"AWS_ACCESS_KEY_ID": "load", "AWS_SECRET_ACCESS_KEY": "load", "AWS_DEFAULT_REGION": "us-east-1"}
#: Tiny jobs: the worker must not take the CPU the API is measured on.
JOB_FIELDS = {"steps": "2", "skip_steps": "1", "size": "64"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # not up yet
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {timeout} s")


def photos_512() -> tuple[bytes, bytes]:
    """Two real photographs (scikit-image's cat and coffee) as 512x512 PNGs."""
    from PIL import Image
    from skimage import data

    out = []
    for array in (data.chelsea(), data.coffee()):
        buffer = io.BytesIO()
        Image.fromarray(array).resize((512, 512)).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out[0], out[1]


class Stack:
    """The processes under test; ``stop`` ends every one of them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.procs = workdir, []
        self.redis_port, self.s3_port, self.api_port = free_port(), free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.api_port}"

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.procs.append((proc, log))
        return proc

    def start(self) -> None:
        from qalign_core.testing import save_tiny_model

        redis = shutil.which("redis-server")
        if redis is None:
            raise SystemExit("redis-server is not on PATH")
        self._spawn(
            "redis",
            [
                redis,
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
        )
        env = {**os.environ, **AWS_ENV, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        code = (
            "import time; from moto.server import ThreadedMotoServer; "
            f"s = ThreadedMotoServer(ip_address='127.0.0.1', port={self.s3_port}, verbose=False); s.start(); "
            "import boto3; boto3.client('s3', endpoint_url='http://127.0.0.1:"
            f"{self.s3_port}', region_name='us-east-1').create_bucket(Bucket='load'); "
            "print('s3 ready', flush=True)\nwhile True: time.sleep(3600)"
        )
        self._spawn("s3", [sys.executable, "-c", code], env)
        model = save_tiny_model(self.workdir / "tiny-model")
        env.update(
            {
                "QALIGN_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
                "QALIGN_MODEL": str(model),
                "QALIGN_DEVICE": "cpu",
                "QALIGN_S3_BUCKET": "load",
                "QALIGN_S3_ENDPOINT_URL": f"http://127.0.0.1:{self.s3_port}",
                "QALIGN_S3_REGION": "us-east-1",
                "QALIGN_MAX_QUEUE_DEPTH": "1000000",
                "QALIGN_INVERSION_CACHE": "false",
                "QALIGN_CLEANUP_INTERVAL": "0",
                "QALIGN_LOG_LEVEL": "WARNING",
            }
        )
        worker_env = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self._spawn(
            "worker",
            ["nice", "-n", "19", sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker"]
            + [
                "--pool=solo",
                "--queues=qalign",
                "--without-gossip",
                "--without-mingle",
                "--loglevel=WARNING",
            ],
            worker_env,
        )
        self._spawn(
            "api",
            [sys.executable, "-c", f"from service.cli import serve; serve('127.0.0.1', {self.api_port})"],
            env,
        )
        wait_until(lambda: httpx.get(f"{self.base}/readyz", timeout=5).status_code == 200, 240, "the API")

    def stop(self) -> None:
        for proc, log in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            log.close()


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50_ms": float("nan"), "p90_ms": float("nan"), "p99_ms": float("nan")}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"p50_ms": cuts[49] * 1000, "p90_ms": cuts[89] * 1000, "p99_ms": cuts[98] * 1000}


async def run_load(base: str, images: tuple[bytes, bytes], args: argparse.Namespace) -> dict:
    latencies: dict[str, list[float]] = {"POST /transfer": [], "GET /jobs/{id}": []}
    statuses: dict[str, Counter] = {name: Counter() for name in latencies}
    remaining = args.submissions
    deadline = time.monotonic() + args.duration
    files = {"structure": ("s.png", images[0], "image/png"), "appearance": ("a.png", images[1], "image/png")}
    limits = httpx.Limits(max_connections=args.users, max_keepalive_connections=args.users)

    async def timed(name: str, call) -> httpx.Response:
        started = time.perf_counter()
        response = await call
        latencies[name].append(time.perf_counter() - started)
        statuses[name][response.status_code] += 1
        return response

    async def user(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            response = await timed("POST /transfer", client.post("/transfer", files=files, data=JOB_FIELDS))
            if response.status_code != 202:
                continue
            job_id = response.json()["id"]
            for _ in range(args.polls):
                if time.monotonic() >= deadline:
                    break
                await timed("GET /jobs/{id}", client.get(f"/jobs/{job_id}"))

    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(user(client) for _ in range(args.users)))
        wall = time.perf_counter() - started
    report = {"wall_s": wall, "users": args.users, "endpoints": {}}
    for name, values in latencies.items():
        report["endpoints"][name] = {
            "requests": len(values),
            "rps": len(values) / wall,
            **percentiles(values),
            "statuses": dict(statuses[name]),
        }
    report["total_rps"] = sum(len(v) for v in latencies.values()) / wall
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load_api", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=16, help="concurrent virtual users (connections)")
    parser.add_argument("--submissions", type=int, default=300, help="POST /transfer requests in all")
    parser.add_argument("--polls", type=int, default=3, help="GET /jobs/{id} per submitted job")
    parser.add_argument("--duration", type=float, default=120.0, help="stop after this many seconds")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    images = photos_512()
    with tempfile.TemporaryDirectory(prefix="qalign-load-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.start()
            report = asyncio.run(run_load(stack.base, images, args))
        finally:
            stack.stop()
    report["image_bytes"] = [len(images[0]), len(images[1])]
    print(f"{args.users} users, {report['wall_s']:.1f} s, {report['total_rps']:.1f} requests/s in all")
    print(
        f"{'endpoint':<16} {'requests':>8} {'req/s':>7} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}  statuses"
    )
    for name, row in report["endpoints"].items():
        print(
            f"{name:<16} {row['requests']:>8} {row['rps']:>7.1f} {row['p50_ms']:>8.1f} {row['p90_ms']:>8.1f} "
            f"{row['p99_ms']:>8.1f}  {row['statuses']}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
