"""Fault injection with real processes: workers killed (SIGKILL), frozen (SIGSTOP) or stopped (SIGTERM)
mid-job, Redis and the S3 server down for 20 s mid-run, and a burst of 1000 submissions against a small
queue limit.

Everything runs on this module's own redis-server (AOF on, so records and messages survive its
restart, as in compose), moto S3 server and Celery workers (prefork, concurrency 1, as in compose).
The job time limit is long (300 s, so the broker's visibility timeout is 630 s): a job of a dead
worker can only come back in time through the takeover watch of the live workers
(HEARTBEAT_TTL 2 s -> takeover bound 12 s). Every wait is on a condition, with deadlines far above
what an idle machine needs; the fixtures stop every process they started.
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
HEARTBEAT_TTL_S = 2.0
#: What issue 11 asks of a host loss: the job runs again on a live worker within HEARTBEAT_TTL + 10 s.
TAKEOVER_BOUND_S = HEARTBEAT_TTL_S + 10
#: How long the outage tests keep a dependency down.
OUTAGE_S = 20.0
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
        self.proc.wait(30)

    def freeze(self) -> None:
        """SIGSTOP to the whole group: a host that hangs (or is cut off) and may come back."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGCONT)  # a frozen worker cannot stop
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

    def wait_live(self, *workers: Worker, timeout: float = 180) -> None:
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
            "QALIGN_JOB_TIME_LIMIT": "300",
            "QALIGN_REDELIVERY_CHECK_INTERVAL": "1",
            "QALIGN_MAX_ATTEMPTS": "2",
            "QALIGN_HEARTBEAT_INTERVAL": "0.5",
            "QALIGN_HEARTBEAT_TTL": str(HEARTBEAT_TTL_S),
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
    from service.backends.redis_records import open_redis_stores

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
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=180)
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


def wait_running(fleet: Fleet, job_id: str, timeout: float = 180):
    """The record once it is running in a live worker's pool child, past the model's first step."""

    def check():
        job = fleet.jobs.get(job_id)
        if job is not None and job.status == "running" and job.stage in ("inverting", "denoising"):
            return job if fleet.holder(job.worker) else None
        return None

    return wait_for(check, timeout=timeout, interval=0.05)


def wait_terminal(fleet: Fleet, job_ids, timeout: float):
    def check():
        found = fleet.jobs.get_many(list(job_ids))
        return found if len(found) == len(job_ids) and all(j.status in TERMINAL for j in found) else None

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


def result_key(job) -> str:
    """The object a job's attempt writes (storage.result_key): later attempts get their own."""
    return f"results/{job.id}.png" if job.attempts == 1 else f"results/{job.id}-a{job.attempts}.png"


def live_workers(fleet: Fleet) -> list[Worker]:
    return [w for w in fleet.workers if w.proc.poll() is None]


def logged(fleet: Fleet, *needles: str) -> int:
    """How many worker log lines contain every one of ``needles``."""
    return sum(1 for line in fleet.logs().splitlines() if all(n in line for n in needles))


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.timeout(300)
def test_sigkilled_workers_jobs_are_redelivered_and_finish_once(api, fleet, deps, images):
    """3 jobs, 2 workers; each round one worker is SIGKILLed mid-job (whole worker, then only its pool
    child, then the whole worker again) and replaced. Every job succeeds on a survivor, with one result."""
    fleet.wait_live(*live_workers(fleet))
    job_ids = [submit(api, images, seed=i, **JOB) for i in range(3)]
    killed: dict[str, str] = {}
    for round_no in range(3):
        target = next(i for i in job_ids if i not in killed)
        running = wait_running(fleet, target, timeout=180)
        victim = fleet.holder(running.worker)
        assert victim is not None
        killed[target] = running.worker
        if round_no == 1:  # only the pool child: the main process requeues the message at once
            os.kill(int(running.worker.rsplit(":", 1)[1]), signal.SIGKILL)
        else:  # the whole worker: a live worker's takeover watch republishes the job
            victim.kill()
            fleet.start(f"{victim.name}{round_no}")

    done = wait_terminal(fleet, job_ids, timeout=240)
    for job in done:
        assert job.status == "succeeded", (job, fleet.logs()[-4000:])
        assert job.worker != killed[job.id], "finished by a surviving process, not the killed one"
        assert job.attempts == 2, "the killed run counts as one attempt"
        assert job.result.key == result_key(job)
        assert result_objects(deps, job.id) == [job.result.key]
        assert successful_runs(fleet, job.id) == 1, "exactly one run of each job completed"
    fleet.wait_live(*live_workers(fleet), timeout=180)


@pytest.mark.timeout(300)
def test_host_loss_is_taken_over_within_heartbeat_ttl_plus_10_s(api, fleet, deps, images):
    """A whole worker (parent and pool child) is SIGKILLed mid-job while another worker is idle. With a
    job time limit of 300 s the broker would give the message back after 630 s; the survivor's takeover
    watch has the job running again within HEARTBEAT_TTL + 10 s, and it succeeds there, once."""
    fleet.wait_live(*live_workers(fleet), timeout=180)
    job_id = submit(api, images, seed=50, **JOB)
    running = wait_running(fleet, job_id, timeout=180)
    victim = fleet.holder(running.worker)
    survivors = [w for w in live_workers(fleet) if w is not victim]
    assert survivors, "another worker is live"

    killed_at = time.monotonic()
    victim.kill()

    def taken_over():
        job = fleet.jobs.get(job_id)
        return job if job.attempts == 2 and job.worker != running.worker else None

    again = wait_for(taken_over, timeout=120, interval=0.05)
    takeover_s = time.monotonic() - killed_at
    print(f"\nhost loss: job running again on {again.worker} {takeover_s:.2f} s after the SIGKILL")
    assert any(w.runs(again.worker) for w in survivors)
    assert takeover_s <= TAKEOVER_BOUND_S, f"takeover took {takeover_s:.1f} s (bound {TAKEOVER_BOUND_S} s)"
    wait_for(lambda: logged(fleet, "republishing job", job_id), timeout=60)

    done = wait_terminal(fleet, [job_id], timeout=180)[0]
    assert done.status == "succeeded" and done.attempts == 2, (done, fleet.logs()[-4000:])
    assert done.result.key == result_key(done) and result_objects(deps, job_id) == [done.result.key]
    assert successful_runs(fleet, job_id) == 1
    fleet.start(f"{victim.name}h")
    fleet.wait_live(*live_workers(fleet), timeout=180)


@pytest.mark.timeout(300)
def test_a_frozen_worker_that_wakes_up_after_the_takeover_writes_nothing(api, fleet, deps, images):
    """SIGSTOP a whole worker mid-job (a hung host), let the survivor take the job over and finish it,
    then SIGCONT: the old run notices it no longer holds the job and stops, and neither the record nor
    the new attempt's result object changes."""
    fleet.wait_live(*live_workers(fleet), timeout=180)
    job_id = submit(api, images, seed=60, **JOB)
    running = wait_running(fleet, job_id, timeout=180)
    sleeper = fleet.holder(running.worker)
    sleeper.freeze()
    try:
        done = wait_terminal(fleet, [job_id], timeout=180)[0]
        assert done.status == "succeeded" and done.attempts == 2 and done.worker != running.worker
        first_result = result_objects(deps, job_id)
        assert first_result == [done.result.key]
    finally:
        sleeper.thaw()
    # The woken run reads the record at its next step, sees another holder, and stops without writing.
    wait_for(lambda: "stopped without writing" in sleeper.log.read_text(), timeout=120)
    fleet.wait_live(sleeper, timeout=120)
    after = fleet.jobs.get(job_id)
    assert after == done, "the woken run's late writes did not touch the record"
    assert result_objects(deps, job_id) == first_result
    assert successful_runs(fleet, job_id) == 1


@pytest.mark.timeout(300)
def test_poison_job_fails_after_max_attempts(api, fleet, images):
    """A job whose worker dies on every attempt fails after QALIGN_MAX_ATTEMPTS (2) with worker_lost."""
    fleet.wait_live(*live_workers(fleet), timeout=180)
    job_id = submit(api, images, seed=100, **JOB)
    seen = []
    for attempt in range(2):
        running = wait_running(fleet, job_id, timeout=180)
        assert running.attempts == attempt + 1 and running.worker not in seen
        seen.append(running.worker)
        victim = fleet.holder(running.worker)
        victim.kill()
        fleet.start(f"{victim.name}p{attempt}")
    failed = wait_terminal(fleet, [job_id], timeout=180)[0]
    assert failed.status == "failed" and failed.error.type == "worker_lost", failed
    assert "2 attempts" in failed.error.detail and "MAX_ATTEMPTS=2" in failed.error.detail
    body = api.get(f"/jobs/{job_id}").json()
    assert body["status"] == "failed" and body["error"]["type"] == "worker_lost" and body["result"] is None
    fleet.wait_live(*live_workers(fleet), timeout=180)


@pytest.mark.timeout(400)
def test_sigterm_mid_job_finishes_it_or_requeues_it(api, fleet, images):
    """Warm shutdown: with grace, the stopping worker finishes its job; with no grace left, the job is
    requeued (no attempt used) and another worker finishes it. Either way the worker exits by itself."""
    patient = fleet.start("patient", QALIGN_WORKER_SHUTDOWN_GRACE="120")
    fleet.wait_live(patient, timeout=180)
    for worker in [w for w in fleet.workers if w is not patient]:  # patient alone takes the next job
        worker.stop()
    hasty = [fleet.start(f"hasty{i}", QALIGN_WORKER_SHUTDOWN_GRACE="0.2") for i in range(2)]

    job_id = submit(api, images, seed=200, **JOB)
    running = wait_running(fleet, job_id, timeout=180)
    assert fleet.holder(running.worker) is patient
    patient.proc.send_signal(signal.SIGTERM)
    done = wait_terminal(fleet, [job_id], timeout=180)[0]
    assert done.status == "succeeded" and done.worker == running.worker and done.attempts == 1
    assert patient.proc.wait(60) == 0, "warm shutdown ends the worker by itself"

    fleet.wait_live(*hasty, timeout=180)
    job_id = submit(api, images, seed=201, **JOB)
    running = wait_running(fleet, job_id, timeout=180)
    stopping = fleet.holder(running.worker)
    stopping.proc.send_signal(signal.SIGTERM)
    done = wait_terminal(fleet, [job_id], timeout=180)[0]
    assert done.status == "succeeded", (done, fleet.logs()[-4000:])
    assert done.worker != running.worker and done.attempts == 1, "requeued without using an attempt"
    assert stopping.proc.wait(60) == 0
    assert "job interrupted by shutdown; requeued" in stopping.log.read_text()
    fleet.wait_live(fleet.start("c"), timeout=180)


def assert_unavailable(response) -> None:
    """A 503 problem with Retry-After: what a client sees while a dependency is down (never a 500)."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["detail"] and int(response.headers["retry-after"]) >= 1


@pytest.mark.timeout(400)
def test_redis_and_s3_restart_mid_run(api, fleet, deps, images):
    """Redis down for 20 s while jobs run and wait: the API answers 503 + Retry-After throughout (POST
    and GET), the workers wait the outage out, and every job ends succeeded afterwards. Then the same
    for a short S3 restart. Holds on a busy machine: the outage lasts until the workers have met it."""
    fleet.wait_live(*live_workers(fleet), timeout=180)
    jobs = [submit(api, images, seed=300 + i, **JOB) for i in range(3)]
    wait_running(fleet, jobs[0], timeout=180)

    met_before = logged(fleet, "unreachable")
    deps["redis"].stop()
    down_at = time.monotonic()
    try:
        while True:  # the API answers, 503 + Retry-After, for the whole outage
            assert_unavailable(post(api, images, **TINY))
            assert_unavailable(api.get(f"/jobs/{jobs[0]}"))
            met = logged(fleet, "unreachable") > met_before  # a heartbeat or a record write failed
            if met and time.monotonic() - down_at >= OUTAGE_S:
                break
            assert time.monotonic() - down_at < 120, "the workers never met the outage"
            time.sleep(0.5)
    finally:
        deps["redis"].start()
    print(f"\nRedis down {time.monotonic() - down_at:.1f} s mid-run")
    wait_for(lambda: api.get("/readyz").status_code == 200, timeout=120)

    second = submit(api, images, seed=310, **JOB)
    wait_running(fleet, second, timeout=180)
    deps["s3"].stop()
    try:
        assert_unavailable(post(api, images, **TINY))
        wait_for(lambda: (job := fleet.jobs.get(second)).stage == "uploading" or job.finished, timeout=180)
    finally:
        deps["s3"].start()
    wait_for(lambda: api.get("/readyz").status_code == 200, timeout=120)

    done = wait_terminal(fleet, [*jobs, second], timeout=300)
    assert [j.status for j in done] == ["succeeded"] * 4, [(j.id, j.status, j.error) for j in done]
    assert all(j.result.key == result_key(j) for j in done)
    third = submit(api, images, seed=320, **TINY)
    assert wait_terminal(fleet, [third], timeout=180)[0].status == "succeeded"


@pytest.mark.timeout(400)
def test_s3_down_for_20_s_mid_run_is_waited_out(api, fleet, deps, images):
    """S3 stops while one job runs and others wait (their inputs are read while it is down): uploads and
    input downloads are retried with backoff, and after 20 s down every job succeeds, with one whole
    result object each."""
    fleet.wait_live(*live_workers(fleet), timeout=180)
    jobs = [submit(api, images, seed=400 + i, **JOB) for i in range(3)]
    wait_running(fleet, jobs[0], timeout=180)

    met_before = logged(fleet, "storage unavailable", "S3")
    deps["s3"].stop()
    down_at = time.monotonic()
    try:
        assert_unavailable(post(api, images, **TINY))
        # Down until a worker has met the outage on an upload or an input download, and 20 s at least.
        wait_for(lambda: logged(fleet, "storage unavailable", "S3") > met_before, timeout=240, interval=0.25)
        wait_for(lambda: time.monotonic() - down_at >= OUTAGE_S, timeout=OUTAGE_S + 5)
        assert not any(j.finished for j in fleet.jobs.get_many(jobs)), "nothing ended while S3 was down"
    finally:
        deps["s3"].start()
    print(f"\nS3 down {time.monotonic() - down_at:.1f} s mid-run")

    done = wait_terminal(fleet, jobs, timeout=300)
    assert [j.status for j in done] == ["succeeded"] * 3, [(j.id, j.status, j.error) for j in done]
    for job in done:
        assert result_objects(deps, job.id) == [job.result.key]
        assert api.get(f"/jobs/{job.id}").json()["status"] == "succeeded"


#: The burst: logical submissions, client threads, and the queue limit that makes most of them wait.
BURST, BURST_CLIENTS, BURST_QUEUE = 1000, 8, 20
#: The cheapest valid run: the burst tests the plumbing (admission, queue, claims), not the images.
BURST_PARAMS = {**TINY, "swap_guidance_scale": 1.0, "adain": "none"}


@pytest.mark.timeout(1800)
def test_burst_with_small_queue_limit_loses_nothing(deps, fleet, images):
    """1000 submissions from 8 client threads against a queue limit of 20: the excess gets 429 with
    Retry-After and is retried (same Idempotency-Key) after it; every submission ends as exactly one
    job, every job succeeds, no 5xx."""
    import threading
    import uuid

    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    fleet.wait_live(*live_workers(fleet), timeout=180)
    settings = Settings(
        _env_file=None,
        **{k.removeprefix("QALIGN_").lower(): v for k, v in deps["env"].items() if "QALIGN_" in k},
        max_queue_depth=BURST_QUEUE,
    )
    seeds = range(10_000, 10_000 + BURST)
    keys = {seed: uuid.uuid4().hex for seed in seeds}
    accepted: dict[int, set[str]] = {seed: set() for seed in seeds}
    refusals, unexpected, lock = [0], [], threading.Lock()

    def client_thread(client, mine) -> None:
        for seed in mine:
            while True:
                response = post_keyed(client, images, keys[seed], seed=seed, **BURST_PARAMS)
                if response.status_code in (200, 202):
                    with lock:
                        accepted[seed].add(response.json()["id"])
                    break
                if response.status_code == 429:
                    with lock:
                        refusals[0] += 1
                    time.sleep(int(response.headers["retry-after"]))
                    continue
                with lock:
                    unexpected.append((response.status_code, response.text[:200]))
                return

    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, timeout=120)
        started = time.monotonic()
        threads = [
            threading.Thread(target=client_thread, args=(client, list(seeds)[i::BURST_CLIENTS]), daemon=True)
            for i in range(BURST_CLIENTS)
        ]
        for thread in threads:
            thread.start()
        # No fixed deadline for 1000 jobs on a machine of unknown speed: the burst must keep moving
        # (another submission accepted within BURST_STALL_S), and it must end.
        wait_progressing(
            lambda: sum(len(ids) for ids in accepted.values()),
            lambda: not any(t.is_alive() for t in threads) or bool(unexpected),
        )
        submitted_s = time.monotonic() - started
    assert not unexpected, unexpected[:5]
    assert all(len(ids) == 1 for ids in accepted.values()), "each submission is exactly one job"
    job_ids = [next(iter(ids)) for ids in accepted.values()]
    assert len(set(job_ids)) == BURST and refusals[0] > 0
    finished = lambda: sum(1 for j in fleet.jobs.get_many(job_ids) if j.status in TERMINAL)  # noqa: E731
    wait_progressing(finished, lambda: finished() == BURST)
    done = fleet.jobs.get_many(job_ids)
    total_s = time.monotonic() - started
    assert {j.status for j in done} == {"succeeded"}, [(j.id, j.status, j.error) for j in done][:5]
    # No job record beyond the 1000: one record per seed of the burst.
    burst_records = [j for j in fleet.jobs.all_jobs() if j.params.get("seed") in keys]
    assert len(burst_records) == BURST, len(burst_records)
    print(
        f"\nburst: {BURST} submissions ({refusals[0]} answers 429, retried) in {submitted_s:.0f} s, "
        f"all {BURST} succeeded {total_s:.0f} s after the first"
    )


#: Longest pause in the burst's progress (one more job accepted or finished) that the test accepts:
#: a job of the burst takes about a second here, so a minute of nothing means something is stuck.
BURST_STALL_S = 120.0


def wait_progressing(measure, finished, stall_s: float = BURST_STALL_S) -> None:
    """Wait until ``finished()``, as long as ``measure()`` keeps growing at least every ``stall_s``."""
    last, moved = measure(), time.monotonic()
    while not finished():
        now, value = time.monotonic(), measure()
        if value > last:
            last, moved = value, now
        assert now - moved < stall_s, f"no progress for {stall_s} s (stuck at {value})"
        time.sleep(0.5)


def post_keyed(client, images: tuple[bytes, bytes], key: str, **fields):
    files = {"structure": ("s.png", images[0], "image/png"), "appearance": ("a.png", images[1], "image/png")}
    data = {k: str(v) for k, v in fields.items()}
    return client.post("/transfer", files=files, data=data, headers={"Idempotency-Key": key})


#: STRANDED_MESSAGE_AFTER of the rescuing worker (60 s by default; short here to keep the test short).
STRANDED_AFTER_S = 5.0


@pytest.mark.timeout(400)
def test_a_worker_killed_between_taking_a_message_and_the_claim_strands_no_job(api, fleet, deps, images):
    """A worker (main process and pool child) is SIGKILLed right after it took a job's message and
    before it claimed the job (a fault point, QALIGN_TEST_FAULT=before_claim): the message sits in the
    broker's ``unacked`` hash (it would come back after the visibility timeout, 630 s here) and the
    record stays ``queued``. A live worker's takeover scan publishes it again within
    STRANDED_MESSAGE_AFTER + the scan interval, and the job succeeds once, in its first attempt."""
    import redis

    from service.backends.celery_queue import broker_view

    fleet.stop_all()
    rescuer = fleet.start("rescuer", QALIGN_STRANDED_MESSAGE_AFTER=str(STRANDED_AFTER_S))
    victim = fleet.start("victim", QALIGN_TEST_FAULT="before_claim")
    fleet.wait_live(rescuer, victim, timeout=180)
    broker = redis.Redis.from_url(deps["env"]["QALIGN_REDIS_URL"])
    # With prefetch 1 a busy worker takes no second message: while the rescuer runs one, the victim
    # takes the next. Submit until the victim took one and died.
    job_ids: list[str] = []
    for seed in range(70, 76):
        job_ids.append(submit(api, images, seed=seed, **JOB))
        latest = job_ids[-1]
        wait_for(
            lambda i=latest: victim.proc.poll() is not None or fleet.jobs.get(i).status != "queued",
            timeout=120,
        )
        if victim.proc.poll() is not None:
            break
    victim.proc.wait(120)
    killed_at = time.monotonic()
    stranded = next(i for i in job_ids if fleet.jobs.get(i).status == "queued")
    assert logged(fleet, "fault injection", stranded), victim.log.read_text()[-3000:]
    view = broker_view(broker)
    assert stranded in view.delivered and stranded not in view.waiting, "held in `unacked` by a dead worker"

    wait_for(lambda: logged(fleet, "republishing job", stranded), timeout=120, interval=0.05)
    republish_s = time.monotonic() - killed_at
    done = wait_terminal(fleet, job_ids, timeout=240)
    total_s = time.monotonic() - killed_at
    print(
        f"\nstranded message: republished {republish_s:.2f} s after the kill, job done after {total_s:.2f} s"
    )
    assert republish_s <= STRANDED_AFTER_S + 10, f"republished after {republish_s:.1f} s"
    for job in done:
        assert job.status == "succeeded" and job.attempts == 1, (job, fleet.logs()[-4000:])
        assert rescuer.runs(job.worker)
        assert result_objects(deps, job.id) == [job.result.key]
        assert successful_runs(fleet, job.id) == 1
    broker.close()
