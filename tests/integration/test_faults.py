"""Fault injection with real processes: workers killed (SIGKILL) or stopped (SIGTERM) mid-job, Redis and
the S3 server restarted mid-run, and a burst of submissions against a small queue limit.

Everything runs on this module's own redis-server (AOF on, so records and messages survive its
restart, as in compose), moto S3 server and Celery workers (prefork, concurrency 1, as in compose),
with a short visibility timeout so a dead worker's message comes back within seconds:
JOB_TIME_LIMIT 8 s -> hard limit 9 s < VISIBILITY_TIMEOUT 10 s (the relation Settings enforces).
Each test bounds its waits; the fixtures stop every process they started.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from int_helpers import (
    AWS_ENV,
    REPO,
    TERMINAL,
    MotoS3,
    RedisServer,
    celery_worker_args,
    stop_process,
    wait_for,
    worker_env,
)
from PIL import Image

pytestmark = [pytest.mark.integration]
BUCKET = "faults"
VISIBILITY_S = 10
#: A job of the tiny model that lasts a few seconds on this machine, so it can be caught running.
JOB = {"steps": 16, "skip_steps": 2, "size": 64}
#: The tiny parameters of the burst.
TINY = {"steps": 2, "skip_steps": 1, "size": 64}


# ---------------------------------------------------------------------------------------------- processes
def _children(pid: int) -> list[int]:
    """Child pids of ``pid`` (the prefork pool), from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


class Worker:
    """One ``celery worker`` (prefork, concurrency 1) in its own process group."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name, self.log = name, log_dir / f"{name}.log"
        with open(self.log, "wb") as handle:
            self.proc = subprocess.Popen(
                celery_worker_args(name, pool="prefork"),
                cwd=REPO,
                env=env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def pids(self) -> set[int]:
        return {self.proc.pid, *_children(self.proc.pid)}

    def runs(self, job_worker: str | None) -> bool:
        """Whether a job record's ``worker`` (host:pid of a pool child) is one of this worker's processes."""
        return bool(job_worker) and int(job_worker.rsplit(":", 1)[1]) in self.pids()

    def live(self, stores) -> bool:
        return self.proc.poll() is None and any(self.runs(name) for name in stores.workers.live())

    def kill(self) -> None:
        """SIGKILL to the whole group: a lost host or an OOM-killed container."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            stop_process(self.proc, 15)
        if self.proc.poll() is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # a pool child left behind


class Fleet:
    """The module's workers; ``start`` does not wait, so a restart overlaps with the test's waits."""

    def __init__(self, env: dict[str, str], log_dir: Path, stores) -> None:
        self.env, self.log_dir, self.stores = env, log_dir, stores
        self.jobs = stores.records
        self.workers: list[Worker] = []

    def start(self, name: str, **extra: str) -> Worker:
        worker = Worker(name, worker_env({**self.env, **extra}), self.log_dir)
        self.workers.append(worker)
        return worker

    def wait_live(self, *workers: Worker, timeout: float = 120) -> None:
        for worker in workers:
            wait_for(lambda w=worker: w.live(self.stores) or w.proc.poll() is not None, timeout=timeout)
            assert worker.proc.poll() is None, worker.log.read_text()[-3000:]

    def holder(self, job_worker: str | None) -> Worker | None:
        return next((w for w in self.workers if w.proc.poll() is None and w.runs(job_worker)), None)

    def stop_all(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = [w for w in self.workers if w.proc.poll() is None]

    def logs(self) -> str:
        return "".join(path.read_text(errors="replace") for path in sorted(self.log_dir.glob("*.log")))


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def deps(tmp_path_factory, tiny_model_dir):
    redis_server = RedisServer(directory=tmp_path_factory.mktemp("faults-redis")).start()
    s3 = MotoS3().start()
    try:
        s3.create_bucket(BUCKET)
        env = {
            "QALIGN_REDIS_URL": redis_server.url,
            "QALIGN_MODEL": tiny_model_dir,
            "QALIGN_DEVICE": "cpu",
            "QALIGN_S3_BUCKET": BUCKET,
            "QALIGN_S3_ENDPOINT_URL": s3.endpoint,
            "QALIGN_S3_REGION": "us-east-1",
            "QALIGN_JOB_TIME_LIMIT": str(VISIBILITY_S - 2),
            "QALIGN_VISIBILITY_TIMEOUT": str(VISIBILITY_S),
            "QALIGN_REDELIVERY_CHECK_INTERVAL": "1",
            "QALIGN_MAX_ATTEMPTS": "2",
            "QALIGN_HEARTBEAT_INTERVAL": "0.5",
            "QALIGN_HEARTBEAT_TTL": "2",
            "QALIGN_PROGRESS_INTERVAL": "0.2",
            "QALIGN_CANCEL_CHECK_INTERVAL": "0.1",
            "QALIGN_READINESS_CACHE_S": "0",
            "QALIGN_CLEANUP_INTERVAL": "0",
            "QALIGN_INVERSION_CACHE": "false",
            "OMP_NUM_THREADS": "1",
            **AWS_ENV,
        }
        yield {"redis": redis_server, "s3": s3, "env": env}
    finally:
        redis_server.stop()
        s3.stop()


@pytest.fixture(scope="module")
def fleet(deps, tmp_path_factory):
    from service.jobs.redis_store import open_redis_stores

    stores = open_redis_stores(deps["env"]["QALIGN_REDIS_URL"], ttl=3600)
    fleet = Fleet(deps["env"], tmp_path_factory.mktemp("faults-workers"), stores)
    try:
        a, b = fleet.start("a"), fleet.start("b")
        fleet.wait_live(a, b, timeout=180)
        yield fleet
    finally:
        fleet.stop_all()
        stores.close()


@pytest.fixture(scope="module")
def api(deps, fleet):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        _env_file=None,
        **{k.removeprefix("QALIGN_").lower(): v for k, v in deps["env"].items() if "QALIGN_" in k},
    )
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60)
        yield client


@pytest.fixture(scope="module")
def images() -> tuple[bytes, bytes]:
    def png(color: tuple[int, int, int]) -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", (96, 96), color).save(buffer, format="PNG")
        return buffer.getvalue()

    return png((200, 40, 40)), png((30, 60, 220))


# ---------------------------------------------------------------------------------------------- helpers
def post(client, images: tuple[bytes, bytes], **fields):
    files = {"structure": ("s.png", images[0], "image/png"), "appearance": ("a.png", images[1], "image/png")}
    return client.post("/transfer", files=files, data={k: str(v) for k, v in fields.items()})


def submit(client, images, **fields) -> str:
    response = post(client, images, **fields)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_running(fleet: Fleet, job_id: str, timeout: float = 60):
    """The record once it is running in a live worker's pool child, past the model's first step."""

    def check():
        job = fleet.jobs.get(job_id)
        if job is not None and job.status == "running" and job.stage in ("inverting", "denoising"):
            return job if fleet.holder(job.worker) else None
        return None

    return wait_for(check, timeout=timeout, interval=0.05)


def wait_terminal(fleet: Fleet, job_ids, timeout: float):
    def check():
        found = [fleet.jobs.get(i) for i in job_ids]
        return found if all(j is not None and j.status in TERMINAL for j in found) else None

    try:
        return wait_for(check, timeout=timeout, interval=0.25)
    except AssertionError:
        states = {i: (j.status, j.worker, j.attempts) for i in job_ids if (j := fleet.jobs.get(i))}
        raise AssertionError(f"not terminal in {timeout} s: {states}\n{fleet.logs()[-6000:]}") from None


def result_objects(deps, job_id: str) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=deps["s3"].endpoint, region_name="us-east-1")
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=f"results/{job_id}")
    return [item["Key"] for item in listing.get("Contents", [])]


def successful_runs(fleet: Fleet, job_id: str) -> int:
    return sum(1 for line in fleet.logs().splitlines() if "job succeeded" in line and job_id in line)


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.timeout(150)
def test_sigkilled_workers_jobs_are_redelivered_and_finish_once(api, fleet, deps, images):
    """3 jobs, 2 workers; each round one worker is SIGKILLed mid-job (whole worker, then only its pool
    child, then the whole worker again) and replaced. Every job succeeds on a survivor, with one result."""
    job_ids = [submit(api, images, seed=i, **JOB) for i in range(3)]
    killed: dict[str, str] = {}
    for round_no in range(3):
        target = next(i for i in job_ids if i not in killed)
        running = wait_running(fleet, target, timeout=90)
        victim = fleet.holder(running.worker)
        assert victim is not None
        killed[target] = running.worker
        if round_no == 1:  # only the pool child: the main process requeues the message at once
            os.kill(int(running.worker.rsplit(":", 1)[1]), signal.SIGKILL)
        else:  # the whole worker: the message comes back after the visibility timeout
            victim.kill()
            fleet.start(f"{victim.name}{round_no}")

    done = wait_terminal(fleet, job_ids, timeout=100)
    for job in done:
        assert job.status == "succeeded", (job, fleet.logs()[-4000:])
        assert job.worker != killed[job.id], "finished by a surviving process, not the killed one"
        assert job.attempts == 2, "the killed run counts as one attempt"
        assert job.result.key == f"results/{job.id}.png"
        assert result_objects(deps, job.id) == [job.result.key]
        assert successful_runs(fleet, job.id) == 1, "exactly one run of each job completed"
    fleet.wait_live(*[w for w in fleet.workers if w.proc.poll() is None])


@pytest.mark.timeout(120)
def test_poison_job_fails_after_max_attempts(api, fleet, images):
    """A job whose worker dies on every attempt fails after QALIGN_MAX_ATTEMPTS (2) with worker_lost."""
    job_id = submit(api, images, seed=100, **JOB)
    seen = []
    for attempt in range(2):
        running = wait_running(fleet, job_id, timeout=60)
        assert running.attempts == attempt + 1 and running.worker not in seen
        seen.append(running.worker)
        victim = fleet.holder(running.worker)
        victim.kill()
        fleet.start(f"{victim.name}p{attempt}")
    failed = wait_terminal(fleet, [job_id], timeout=60)[0]
    assert failed.status == "failed" and failed.error.type == "worker_lost", failed
    assert "2 attempts" in failed.error.detail and "MAX_ATTEMPTS=2" in failed.error.detail
    body = api.get(f"/jobs/{job_id}").json()
    assert body["status"] == "failed" and body["error"]["type"] == "worker_lost" and body["result"] is None
    fleet.wait_live(*[w for w in fleet.workers if w.proc.poll() is None])


@pytest.mark.timeout(150)
def test_sigterm_mid_job_finishes_it_or_requeues_it(api, fleet, images):
    """Warm shutdown: with grace, the stopping worker finishes its job; with no grace left, the job is
    requeued (no attempt used) and another worker finishes it. Either way the worker exits by itself."""
    patient = fleet.start("patient", QALIGN_WORKER_SHUTDOWN_GRACE="60")
    fleet.wait_live(patient)
    for worker in [w for w in fleet.workers if w is not patient]:  # patient alone takes the next job
        worker.stop()
    hasty = [fleet.start(f"hasty{i}", QALIGN_WORKER_SHUTDOWN_GRACE="0.2") for i in range(2)]

    job_id = submit(api, images, seed=200, **JOB)
    running = wait_running(fleet, job_id, timeout=60)
    assert fleet.holder(running.worker) is patient
    patient.proc.send_signal(signal.SIGTERM)
    done = wait_terminal(fleet, [job_id], timeout=60)[0]
    assert done.status == "succeeded" and done.worker == running.worker and done.attempts == 1
    assert patient.proc.wait(30) == 0, "warm shutdown ends the worker by itself"

    fleet.wait_live(*hasty)
    job_id = submit(api, images, seed=201, **JOB)
    running = wait_running(fleet, job_id, timeout=60)
    stopping = fleet.holder(running.worker)
    stopping.proc.send_signal(signal.SIGTERM)
    done = wait_terminal(fleet, [job_id], timeout=60)[0]
    assert done.status == "succeeded", (done, fleet.logs()[-4000:])
    assert done.worker != running.worker and done.attempts == 1, "requeued without using an attempt"
    assert stopping.proc.wait(30) == 0
    assert "job interrupted by shutdown; requeued" in stopping.log.read_text()
    fleet.wait_live(fleet.start("c"))


@pytest.mark.timeout(150)
def test_redis_and_s3_restart_mid_run(api, fleet, deps, images):
    """Redis, then the S3 server, stop and start again while jobs are running and queued: POST answers
    503 (never 500) while either is down, and every job in flight still ends succeeded afterwards."""
    fleet.wait_live(*[w for w in fleet.workers if w.proc.poll() is None])
    first = [submit(api, images, seed=300 + i, **JOB) for i in range(3)]
    wait_running(fleet, first[0], timeout=60)

    deps["redis"].stop()
    try:
        response = post(api, images, **TINY)
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["detail"] and "Retry-After" in response.headers
        # Down until the workers have noticed while running (a progress write or heartbeat failed).
        wait_for(lambda: any("job store unreachable" in w.log.read_text() for w in fleet.workers), timeout=30)
    finally:
        deps["redis"].start()
    wait_for(lambda: api.get("/readyz").status_code == 200, timeout=60)

    second = submit(api, images, seed=310, **JOB)
    wait_running(fleet, second, timeout=60)
    deps["s3"].stop()
    try:
        response = post(api, images, **TINY)
        assert response.status_code == 503, response.text
        assert "store" in response.json()["detail"]
        # Down until the running job has moved on without the store (it needs S3 only to upload).
        before = fleet.jobs.get(second).progress
        wait_for(
            lambda: fleet.jobs.get(second).progress > before or fleet.jobs.get(second).finished, timeout=30
        )
    finally:
        deps["s3"].start()
    wait_for(lambda: api.get("/readyz").status_code == 200, timeout=60)

    done = wait_terminal(fleet, [*first, second], timeout=110)
    assert [j.status for j in done] == ["succeeded"] * 4, [(j.id, j.status, j.error) for j in done]
    assert all(j.result.key == f"results/{j.id}.png" for j in done)
    third = submit(api, images, seed=320, **TINY)
    assert wait_terminal(fleet, [third], timeout=60)[0].status == "succeeded"


@pytest.mark.timeout(120)
def test_burst_with_small_queue_limit_loses_nothing(deps, fleet, images):
    """300 submissions as fast as one client can send them, queue limit 10: the excess gets 429 with
    Retry-After, every accepted job reaches a terminal status (succeeded), no 5xx."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    fleet.wait_live(*[w for w in fleet.workers if w.proc.poll() is None])
    settings = Settings(
        _env_file=None,
        **{k.removeprefix("QALIGN_").lower(): v for k, v in deps["env"].items() if "QALIGN_" in k},
        max_queue_depth=10,
    )
    accepted, refused, other = [], 0, []
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=60)
        started = time.monotonic()
        for i in range(300):
            response = post(client, images, seed=1000 + i, **TINY)
            if response.status_code == 202:
                accepted.append(response.json()["id"])
            elif response.status_code == 429:
                refused += 1
                assert int(response.headers["retry-after"]) >= 1
            else:
                other.append((response.status_code, response.text[:200]))
            assert time.monotonic() - started < 60, "the burst is bounded in time"
    assert not other, other
    assert refused > 0 and len(accepted) >= 10 and len(accepted) + refused == 300
    done = wait_terminal(fleet, accepted, timeout=100)
    assert {j.status for j in done} == {"succeeded"}, [(j.id, j.status, j.error) for j in done]
