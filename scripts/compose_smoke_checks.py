"""The checks of scripts/compose-smoke.sh, run on the host against the compose stack it started.

The stack listens on 127.0.0.1 (host network); the ports come from the environment
(QALIGN_SMOKE_API_PORT, QALIGN_SMOKE_REDIS_PORT, QALIGN_SMOKE_S3_PORT). Every wait polls a
condition with a wide deadline: the machine may be busy with other work.

1. every service's health check is green, the bucket step exited 0, and `/readyz` answers 200;
2. every process of every container runs as a non-root user;
3. a transfer submitted to the API container succeeds and its result is in S3 (moto), readable
   through the job's presigned URL too;
4. SIGTERM (`docker compose stop worker`) while a job runs: the worker exits 0 by itself within
   its stop grace period, the job is requeued (no attempt used), and once the worker is started
   again the job succeeds exactly once.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's packages

import boto3  # noqa: E402
import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from qalign_schema.jobs import TERMINAL_STATUSES  # noqa: E402

T = TypeVar("T")
BUCKET = "qalign"
LONG_SERVICES = ("api", "worker", "redis", "minio")
#: A short run of the tiny model; and one long enough to be caught running (hundreds of steps).
FAST = {"steps": 10, "skip_steps": 3, "size": 64, "seed": 1}
SLOW = {"steps": 200, "skip_steps": 0, "size": 64, "seed": 2}
STARTED = time.monotonic()


def say(message: str) -> None:
    print(f"[compose-smoke checks {time.monotonic() - STARTED:5.1f}s] {message}", file=sys.stderr, flush=True)


def wait_for(what: str, predicate: Callable[[], T | None], timeout: float, interval: float = 0.5) -> T:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: {what} not within {timeout:.0f} s")
        time.sleep(interval)


def check(condition: object, message: str) -> None:
    if not condition:
        raise SystemExit(f"FAILED: {message}")


class Stack:
    """The compose project: its CLI and the docker client, for inspect/top/logs."""

    def __init__(self, compose: list[str], docker: str) -> None:
        self.compose, self.docker = compose, docker

    def run(self, *args: str, timeout: float = 300) -> str:
        result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        check(result.returncode == 0, f"{' '.join(args)} exited {result.returncode}: {result.stderr[-2000:]}")
        return result.stdout

    def container(self, service: str) -> str:
        ids = self.run(*self.compose, "ps", "--all", "--quiet", service).split()
        check(len(ids) == 1, f"expected one {service} container, found {ids}")
        return ids[0]

    def inspect(self, service: str) -> dict:
        return json.loads(self.run(self.docker, "inspect", self.container(service)))[0]

    def health(self, service: str) -> str:
        return (self.inspect(service)["State"].get("Health") or {}).get("Status", "none")

    def logs(self, service: str) -> str:
        return self.run(*self.compose, "logs", "--no-color", service)


def jpeg(color: tuple[int, int, int], size: int = 64) -> bytes:
    """A small image with some structure (a square on a background) so the model has edges to keep."""
    image = Image.new("RGB", (size, size), color)
    image.paste(
        (255 - color[0], 255 - color[1], 255 - color[2]), (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    )
    buffer = io.BytesIO()
    image.save(buffer, "JPEG" if color[0] % 2 else "PNG")
    return buffer.getvalue()


def submit(api: httpx.Client, fields: dict) -> str:
    files = {
        "structure": ("structure.png", jpeg((40, 120, 200)), "image/png"),
        "appearance": ("appearance.jpg", jpeg((201, 90, 30)), "image/jpeg"),
    }
    response = api.post("/transfer", files=files, data={k: str(v) for k, v in fields.items()})
    check(response.status_code == 202, f"POST /transfer answered {response.status_code}: {response.text}")
    return response.json()["id"]


def job(api: httpx.Client, job_id: str) -> dict:
    response = api.get(f"/jobs/{job_id}")
    check(response.status_code == 200, f"GET /jobs/{job_id} answered {response.status_code}: {response.text}")
    return response.json()


def terminal(api: httpx.Client, job_id: str, timeout: float = 900) -> dict:
    body = wait_for(
        f"job {job_id} finished",
        lambda: (lambda j: j if j["status"] in TERMINAL_STATUSES else None)(job(api, job_id)),
        timeout,
    )
    check(body["status"] == "succeeded", f"job {job_id} ended {body['status']}: {body.get('error')}")
    return body


def result_in_s3(s3, api: httpx.Client, body: dict) -> None:
    """Exactly one result object for the job: an image of the reported size, served by the presigned URL."""
    keys = [
        o["Key"]
        for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"results/{body['id']}").get("Contents", [])
    ]
    check(len(keys) == 1, f"expected one result object for job {body['id']} in S3, found {keys}")
    data = s3.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read()
    image = Image.open(io.BytesIO(data))
    check(
        image.size == (body["result"]["width"], body["result"]["height"]),
        f"result {keys[0]} is {image.size}, the job says {body['result']}",
    )
    presigned = httpx.get(body["result"]["url"], timeout=30)
    check(
        presigned.status_code == 200 and presigned.content == data,
        "the presigned result URL does not serve it",
    )
    say(f"result s3://{BUCKET}/{keys[0]}: {image.format} {image.size[0]}x{image.size[1]}, {len(data)} bytes")


def record(job_id: str):
    """The job's record in Redis (attempts, worker): what the public job object does not show."""
    from service.backends.redis_records import open_redis_stores

    url = f"redis://:{os.environ['REDIS_PASSWORD']}@127.0.0.1:{os.environ['QALIGN_SMOKE_REDIS_PORT']}/0"
    stores = open_redis_stores(url, ttl=3600)
    try:
        return stores.records.get(job_id)
    finally:
        stores.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--compose", required=True, help="the compose command and its options, \\x1f-separated"
    )
    parser.add_argument("--docker", required=True)
    parser.add_argument("--project", required=True)
    args = parser.parse_args()
    stack = Stack([a for a in args.compose.split("\x1f") if a], args.docker)
    api = httpx.Client(base_url=f"http://127.0.0.1:{os.environ['QALIGN_SMOKE_API_PORT']}", timeout=60)
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{os.environ['QALIGN_SMOKE_S3_PORT']}",
        region_name="us-east-1",
        aws_access_key_id="smoke",
        aws_secret_access_key="smoke-secret",
    )

    # 1. health checks and readiness
    for service in LONG_SERVICES:
        check(stack.health(service) == "healthy", f"{service} is {stack.health(service)}, not healthy")
    bucket_step = stack.inspect("createbucket")["State"]
    check(bucket_step["Status"] == "exited" and bucket_step["ExitCode"] == 0, f"createbucket: {bucket_step}")
    ready = wait_for("GET /readyz 200", lambda: (r := api.get("/readyz")).status_code == 200 and r, 300)
    say(f"health checks green ({', '.join(LONG_SERVICES)}); /readyz: {ready.json()}")

    # 2. non-root
    for service in LONG_SERVICES:
        state = stack.inspect(service)
        user = state["Config"]["User"]
        check(user and user.split(":")[0] not in ("root", "0"), f"{service} has no non-root user: {user!r}")
        rows = [
            line.split(None, 2)
            for line in stack.run(args.docker, "top", state["Id"], "-eo", "pid,uid,args").splitlines()[1:]
        ]
        check(rows, f"docker top {service} listed no process")
        root_procs = [row for row in rows if row[1] == "0"]
        check(not root_procs, f"{service} runs processes as root: {root_procs}")
        say(f"{service}: user {user}, {len(rows)} processes, none root")

    # 3. one transfer end to end
    job_id = submit(api, FAST)
    body = terminal(api, job_id)
    say(f"transfer {job_id} succeeded in {body['metrics'].get('total_s')} s of work")
    result_in_s3(s3, api, body)

    # 4. SIGTERM mid-job: requeued, not lost
    job_id = submit(api, SLOW)
    wait_for(
        f"job {job_id} running",
        lambda: (lambda j: j["status"] == "running" and j["stage"] in ("inverting", "denoising"))(
            job(api, job_id)
        ),
        600,
        interval=0.2,
    )
    before = record(job_id)
    say(f"job {job_id} running on {before.worker} (attempt {before.attempts}); docker compose stop worker")
    stopped = time.monotonic()
    stack.run(*stack.compose, "stop", "--timeout", "180", "worker", timeout=400)
    state = stack.inspect("worker")["State"]
    check(
        state["ExitCode"] == 0 and not state["OOMKilled"],
        f"worker did not exit by itself on SIGTERM: exit {state['ExitCode']}",
    )
    say(f"worker exited 0 {time.monotonic() - stopped:.1f} s after SIGTERM")
    check(
        "job interrupted by shutdown; requeued" in stack.logs("worker"), "the worker log has no requeue line"
    )
    after = job(api, job_id)
    check(after["status"] == "queued", f"after the stop the job is {after['status']}, not queued again")
    say(f"job {job_id} is queued again; starting the worker")
    stack.run(*stack.compose, "start", "worker", timeout=300)
    wait_for("worker healthy again", lambda: stack.health("worker") == "healthy", 900, interval=1)
    body = terminal(api, job_id)
    final = record(job_id)
    check(
        final.attempts == before.attempts,
        f"the requeue used an attempt: {before.attempts} -> {final.attempts}",
    )
    result_in_s3(s3, api, body)
    say(f"requeued job {job_id} succeeded once (attempts {final.attempts})")


if __name__ == "__main__":
    main()
