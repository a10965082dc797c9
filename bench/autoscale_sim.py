"""Scale to zero, played on one machine: a KEDA-like loop starts and stops real Celery workers.

    python -m bench.autoscale_sim --jobs 20 --max-workers 3

What runs: a private redis-server, moto's S3 server, the HTTP API in this process with
QALIGN_ACCEPT_WITHOUT_WORKERS=true and **no worker**, and the tiny model. All jobs are submitted
first (the API accepts them: broker and stores are up). Then the loop below plays the autoscaler,
reading the metric KEDA's ``redis`` list trigger reads, ``LLEN qalign`` (the Celery queue: messages
not yet taken by a worker), every ``--interval`` seconds:

  desired = min(max_workers, ceil(LLEN / target))  while LLEN > 0
  desired = 0                                      once LLEN has been 0 for ``--cooldown`` s

It starts workers up to ``desired`` at once and stops the surplus with SIGTERM (Celery's warm
shutdown: a running job is finished, within QALIGN_WORKER_SHUTDOWN_GRACE). Like KEDA, it never
looks at running jobs, only at the list: stopping a busy worker must not lose or repeat its job.

Checked at the end, and the process exits 1 otherwise: every job succeeded, each ran exactly once
(its record's ``attempts`` is 1 and exactly one worker log says it succeeded), and no worker is left.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
FAST = {"steps": "10", "skip_steps": "3", "size": "64"}


def queue_length(client: Any, queue: str = "qalign") -> int:
    """The autoscaler's metric: messages waiting in the Celery queue (a Redis list named after it)."""
    return int(client.llen(queue))


def worker_command(name: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "--pool=solo",
        "--concurrency=1", "--prefetch-multiplier=1", "--queues=qalign", "--without-gossip",
        "--without-mingle", "--without-heartbeat", f"--hostname={name}@%h", "--loglevel=INFO",
    ]  # fmt: skip


@dataclass
class Worker:
    name: str
    proc: subprocess.Popen
    log: Path
    started: float


@dataclass
class Autoscaler:
    """Starts ``celery worker`` processes up to the desired count and SIGTERMs the surplus."""

    env: dict[str, str]
    logs: Path
    max_workers: int = 3
    target: int = 2
    cooldown: float = 3.0
    workers: list[Worker] = field(default_factory=list)
    stopping: list[Worker] = field(default_factory=list)
    started_total: int = 0
    peak: int = 0
    empty_since: float | None = None
    timeline: list[tuple[float, int, int]] = field(default_factory=list)

    def desired(self, length: int, now: float) -> int:
        if length > 0:
            self.empty_since = None
            return min(self.max_workers, math.ceil(length / self.target))
        if self.empty_since is None:
            self.empty_since = now
        if now - self.empty_since >= self.cooldown:
            return 0
        return len(self.workers)  # inside the cooldown: keep what runs

    def step(self, length: int, now: float, t0: float) -> None:
        want = self.desired(length, now)
        while len(self.workers) < want:
            self.started_total += 1
            name = f"sim{self.started_total}"
            log = self.logs / f"{name}.log"
            with open(log, "wb") as handle:
                proc = subprocess.Popen(
                    worker_command(name), cwd=REPO, env=self.env, stdout=handle, stderr=subprocess.STDOUT
                )
            self.workers.append(Worker(name, proc, log, now))
        while len(self.workers) > want:
            worker = self.workers.pop()  # newest first, as a ReplicaSet picks the youngest pod
            worker.proc.send_signal(signal.SIGTERM)
            self.stopping.append(worker)
        self.stopping = [w for w in self.stopping if w.proc.poll() is None]
        self.peak = max(self.peak, len(self.workers))
        if not self.timeline or self.timeline[-1][1:] != (length, len(self.workers)):
            self.timeline.append((round(now - t0, 1), length, len(self.workers)))

    def stop_all(self, grace: float = 60.0) -> None:
        for worker in self.workers + self.stopping:
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        for worker in self.workers + self.stopping:
            try:
                worker.proc.wait(grace)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait(5)
        self.stopping += self.workers
        self.workers = []

    def all_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))


def _images() -> tuple[bytes, bytes]:
    from PIL import Image

    out = []
    for colour in ((200, 60, 40), (30, 90, 200)):
        buffer = io.BytesIO()
        Image.new("RGB", (96, 96), colour).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out[0], out[1]


def run_simulation(
    client: Any,
    redis_url: str,
    worker_env: dict[str, str],
    logs: Path,
    *,
    jobs: int = 20,
    max_workers: int = 3,
    target: int = 2,
    interval: float = 0.5,
    cooldown: float = 3.0,
    deadline_s: float = 900.0,
) -> dict[str, Any]:
    """Submit ``jobs`` to ``client`` (an API with no worker), play the autoscaler until every job is
    finished and the workers are gone; the figures and the invariants' verdicts."""
    import redis

    structure, appearance = _images()
    files = {"structure": ("s.png", structure, "image/png"), "appearance": ("a.png", appearance, "image/png")}
    ids = []
    for _ in range(jobs):
        response = client.post("/transfer", files=files, data=FAST)
        if response.status_code != 202:
            raise RuntimeError(
                f"submission refused with no worker live: {response.status_code} {response.text}"
            )
        ids.append(response.json()["id"])
    first = client.get(f"/jobs/{ids[0]}").json()
    broker = redis.Redis.from_url(redis_url)
    scaler = Autoscaler(worker_env, logs, max_workers=max_workers, target=target, cooldown=cooldown)
    t0 = time.monotonic()
    first_worker_live = last_done = None
    statuses: dict[str, dict] = {}
    try:
        while True:
            now = time.monotonic()
            if now - t0 > deadline_s:
                raise TimeoutError(f"not finished after {deadline_s} s: {scaler.timeline[-5:]}")
            scaler.step(queue_length(broker), now, t0)
            if first_worker_live is None and any(broker.scan_iter(match="qalign:worker:*", count=100)):
                first_worker_live = now - t0
            unfinished = [i for i in ids if statuses.get(i, {}).get("status") not in ("succeeded", "failed")]
            for job_id in unfinished:
                statuses[job_id] = client.get(f"/jobs/{job_id}").json()
            if last_done is None and all(s["status"] in ("succeeded", "failed") for s in statuses.values()):
                last_done = now - t0
            if last_done is not None and not scaler.workers and not scaler.stopping:
                break
            time.sleep(interval)
        scale_in_done = time.monotonic() - t0
    finally:
        scaler.stop_all()
    logs_text = scaler.all_logs()
    records = {}
    for job_id in ids:
        raw = broker.get(f"qalign:job:{job_id}")
        records[job_id] = json.loads(raw) if raw else {}
    broker.close()
    attempts = {i: records[i].get("attempts") for i in ids}
    return {
        "jobs": jobs,
        "max_workers": max_workers,
        "target_list_length": target,
        "first_job_said": first.get("waiting_for"),
        "succeeded": sum(1 for s in statuses.values() if s["status"] == "succeeded"),
        "failed": [i for i, s in statuses.items() if s["status"] != "succeeded"],
        "attempts_not_1": {i: a for i, a in attempts.items() if a != 1},
        "celery_succeeded_lines": logs_text.count("] succeeded in "),
        "workers_started": scaler.started_total,
        "peak_workers": scaler.peak,
        "first_worker_live_s": round(first_worker_live or -1, 1),
        "all_done_s": round(last_done or -1, 1),
        "scaled_to_zero_s": round(scale_in_done, 1),
        "timeline": scaler.timeline,
    }


def verdict(figures: dict[str, Any]) -> list[str]:
    """What went wrong, if anything: lost, failed or repeated jobs."""
    problems = []
    if figures["succeeded"] != figures["jobs"]:
        problems.append(f"{figures['jobs'] - figures['succeeded']} jobs did not succeed: {figures['failed']}")
    if figures["attempts_not_1"]:
        problems.append(f"jobs run more than once (attempts): {figures['attempts_not_1']}")
    if figures["celery_succeeded_lines"] != figures["jobs"]:
        problems.append(
            f"{figures['celery_succeeded_lines']} task completions logged for {figures['jobs']} jobs"
        )
    if figures["first_job_said"] != "worker":
        problems.append(f"a queued job with no worker said waiting_for={figures['first_job_said']!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscale_sim", description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--max-workers", type=int, default=3)
    parser.add_argument("--target", type=int, default=2, help="KEDA listLength: queued jobs per worker")
    parser.add_argument("--deadline", type=float, default=3600.0, help="give up after this many seconds")
    parser.add_argument(
        "--cooldown", type=float, default=3.0, help="seconds of an empty list before scaling to 0"
    )
    args = parser.parse_args(argv)

    from fastapi.testclient import TestClient
    from moto.server import ThreadedMotoServer

    from qalign_core.testing import save_tiny_model
    from service.app import create_app
    from service.settings import Settings

    def free_port() -> int:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    # SIGTERM (a CI timeout, a Ctrl-C'd parent) still stops the workers, Redis and S3 below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    binary = shutil.which("redis-server")
    if binary is None:
        print("redis-server is not installed (apt-get install redis-server)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="qalign-autoscale-"))
    redis_port, s3_port = free_port(), free_port()
    redis_proc = subprocess.Popen(
        [binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    os.environ.update(aws)
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3.start()
    try:
        import boto3
        import redis

        endpoint = f"http://127.0.0.1:{s3_port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="qalign-sim")
        probe = redis.Redis(port=redis_port)
        for _ in range(100):
            try:
                probe.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        probe.close()
        env = {
            "QALIGN_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
            "QALIGN_MODEL": str(save_tiny_model(tmp / "tiny")),
            "QALIGN_DEVICE": "cpu",
            "QALIGN_S3_BUCKET": "qalign-sim",
            "QALIGN_S3_ENDPOINT_URL": endpoint,
            "QALIGN_S3_REGION": "us-east-1",
            "QALIGN_HEARTBEAT_INTERVAL": "1",
            "QALIGN_HEARTBEAT_TTL": "5",
            "QALIGN_READINESS_CACHE_S": "0",
            "QALIGN_ACCEPT_WITHOUT_WORKERS": "true",
        }
        # One torch thread per worker: several workers share this machine's cores.
        worker_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        worker_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), worker_env.get("PYTHONPATH")]))
        settings = Settings(_env_file=None, **{k.removeprefix("QALIGN_").lower(): v for k, v in env.items()})
        (tmp / "logs").mkdir()
        with TestClient(create_app(settings)) as client:
            ready = client.get("/readyz")
            print(f"/readyz with no worker: {ready.status_code} {ready.json()['checks']['workers']}")
            figures = run_simulation(
                client,
                env["QALIGN_REDIS_URL"],
                worker_env,
                tmp / "logs",
                jobs=args.jobs,
                max_workers=args.max_workers,
                target=args.target,
                cooldown=args.cooldown,
                deadline_s=args.deadline,
            )
    finally:
        s3.stop()
        redis_proc.terminate()
        redis_proc.wait(10)
    print(json.dumps(figures, indent=1))
    problems = verdict(figures)
    for problem in problems:
        print("FAIL:", problem, file=sys.stderr)
    if not problems:
        shutil.rmtree(tmp, ignore_errors=True)
        print("OK: every job succeeded exactly once; workers scaled 0 -> "
              f"{figures['peak_workers']} -> 0")  # fmt: skip
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
