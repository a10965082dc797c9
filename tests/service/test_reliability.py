"""Auth and job isolation, Idempotency-Key, backpressure, webhooks (real receiver) and expiry."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from svc_helpers import FakePipeline
from testkit import assert_problem, poll, submit, wait_for

from service.auth import hash_key
from service.jobs import Job, JobResult, new_job_id, utcnow
from service.jobs.redis_store import open_redis_stores
from service.jobs.sqlite_store import open_sqlite_stores
from service.storage import LocalStore, input_key
from service.webhooks import SIGNATURE_HEADER, verify

KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key", "old": "revoked-key"}


def bearer(name: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture
def keyed(embedded_settings):
    return embedded_settings.model_copy(
        update={
            "api_keys": f"alice:{hash_key(KEYS['alice'])}, bob:{hash_key(KEYS['bob'])}",
            "revoked_api_keys": f"old:{hash_key(KEYS['old'])}",
        }
    )


# ------------------------------------------------------------------------------ auth
def test_keys_required_401_403_and_open_operational_endpoints(make_client, keyed, small_images):
    client = make_client(keyed)
    response = submit(client, small_images)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert_problem(submit(client, small_images, headers={"Authorization": "Bearer nope"}), 401)
    assert_problem(submit(client, small_images, headers={"Authorization": "Basic YWxpY2U6eA=="}), 401)
    body = assert_problem(submit(client, small_images, headers=bearer("old")), 403)
    assert "revoked" in body["detail"]
    assert_problem(client.get(f"/jobs/{new_job_id()}"), 401)
    assert_problem(client.delete(f"/jobs/{new_job_id()}"), 401)
    assert_problem(client.get(f"/jobs/{new_job_id()}/result"), 401)
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(path).status_code in (200, 503), path
    assert "bearer" in json.dumps(client.get("/openapi.json").json()["components"]["securitySchemes"]).lower()


def test_metrics_can_require_a_key(make_client, keyed):
    client = make_client(keyed.model_copy(update={"metrics_require_key": True}))
    assert_problem(client.get("/metrics"), 401)
    assert client.get("/metrics", headers=bearer("bob")).status_code == 200


def test_jobs_belong_to_their_key(make_client, keyed, small_images):
    client = make_client(keyed)
    response = submit(client, small_images, headers=bearer("alice"))
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    done = poll(client, job_id, bearer("alice"))
    assert done["status"] == "succeeded"
    assert client.get(f"/jobs/{job_id}/result", headers=bearer("alice")).status_code == 200
    for method, path in (("GET", ""), ("GET", "/result"), ("DELETE", "")):
        body = assert_problem(client.request(method, f"/jobs/{job_id}{path}", headers=bearer("bob")), 404)
        assert body["detail"] == f"no job with id {job_id!r}", "indistinguishable from an unknown id"


def test_open_mode_is_logged(make_client, caplog):
    with caplog.at_level(logging.WARNING, logger="qalign.api"):
        make_client()
    assert any("open mode" in r.getMessage() for r in caplog.records)


def test_key_helper_prints_a_working_entry(capsys, monkeypatch):
    import sys

    from service.auth import KeyRing, main

    monkeypatch.setattr(sys, "argv", ["service.auth", "carol"])
    main()
    lines = dict(line.split(":", 1) for line in capsys.readouterr().out.splitlines())
    key, entry = lines["key"].strip(), lines["entry"].strip()
    assert KeyRing.from_settings(entry, None).owner(f"Bearer {key}") == "carol"


# ------------------------------------------------------------------------------ idempotency
def test_idempotency_same_body_same_job_other_body_409(make_client, keyed, small_images):
    client = make_client(keyed)
    key = {"Idempotency-Key": "order-42", **bearer("alice")}
    first = submit(client, small_images, headers=key, seed=3)
    assert first.status_code == 202
    again = submit(client, small_images, headers=key, seed=3)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == f"/jobs/{first.json()['id']}"
    # Same request in the other encoding is the same canonical request.
    import base64

    body = {
        "structure": base64.b64encode(small_images[0]).decode(),
        "appearance": base64.b64encode(small_images[1]).decode(),
        "seed": 3,
    }
    assert client.post("/transfer", json=body, headers=key).json()["id"] == first.json()["id"]
    body = assert_problem(submit(client, small_images, headers=key, seed=4), 409)
    assert "different request" in body["detail"]
    # Keys are per API key: bob's "order-42" is his own.
    other = submit(client, small_images, headers={"Idempotency-Key": "order-42", **bearer("bob")}, seed=3)
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    assert poll(client, first.json()["id"], bearer("alice"))["status"] == "succeeded"
    # After the job finished the key still answers with it.
    assert submit(client, small_images, headers=key, seed=3).json()["status"] == "succeeded"


def test_concurrent_identical_requests_make_one_job(make_client, small_images, fake_pipeline):
    client = make_client()
    headers = {"Idempotency-Key": "burst-1"}
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: submit(client, small_images, headers=headers, seed=9), range(8)))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [202]
    assert len({r.json()["id"] for r in responses}) == 1
    poll(client, responses[0].json()["id"])
    assert len(fake_pipeline.calls) == 1


def test_idempotency_reservation_is_atomic_and_releasable(stores):
    barrier = threading.Barrier(10)

    def reserve(i):
        barrier.wait()
        return stores.idempotency.reserve("scope", {"job_id": f"job{i}", "fingerprint": "f"}, 60)

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(reserve, range(10)))
    winners = [r for r in results if r is None]
    assert len(winners) == 1
    holder = stores.idempotency.get("scope")["job_id"]
    assert all(r["job_id"] == holder for r in results if r is not None)
    stores.idempotency.release("scope", "someone-else")
    assert stores.idempotency.get("scope")["job_id"] == holder
    stores.idempotency.release("scope", holder)
    assert stores.idempotency.get("scope") is None


def test_redis_idempotency_key_expires_with_its_ttl(redis_url):
    """Redis expires the key itself: the TTL set is checked, not waited for (the SQLite expiry runs
    on an injected clock in tests/service/jobs/test_job_stores.py)."""
    stores = open_redis_stores(redis_url, ttl=3600, prefix=f"t{new_job_id()}:")
    try:
        assert stores.idempotency.reserve("s", {"job_id": "a", "fingerprint": "f"}, 1) is None
        key = f"{stores.idempotency.conn.prefix}idem:s"
        assert 0 < stores.idempotency.client.pttl(key) <= 1000
        stores.idempotency.confirm("s", 3600)
        assert stores.idempotency.client.ttl(key) > 3000
        stores.idempotency.client.delete(key)  # what the TTL does when it runs out
        assert stores.idempotency.reserve("s", {"job_id": "b", "fingerprint": "f"}, 60) is None
    finally:
        stores.close()


# ------------------------------------------------------------------------------ backpressure
def test_queue_full_retry_after_from_recent_durations(make_client, embedded_settings, small_images):
    pipeline = FakePipeline(gate=threading.Event())
    client = make_client(embedded_settings.model_copy(update={"max_queue_depth": 1}), pipeline=pipeline)
    pipeline.gate.set()
    poll(client, submit(client, small_images).json()["id"])  # one finished job: total_s = 0.04
    pipeline.gate.clear()
    pipeline.running.clear()
    submit(client, small_images, seed=1)
    assert pipeline.running.wait(10)
    assert submit(client, small_images, seed=2).status_code == 202
    response = submit(client, small_images, seed=3)
    body = assert_problem(response, 429)
    assert response.headers["retry-after"] == "1", "0.04 s x 1 job / 1 worker, at least 1 s"
    assert "limit 1" in body["detail"]
    pipeline.gate.set()


def test_per_key_inflight_limit(make_client, keyed, small_images):
    pipeline = FakePipeline(gate=threading.Event())
    client = make_client(keyed.model_copy(update={"max_inflight_per_key": 1}), pipeline=pipeline)
    assert submit(client, small_images, headers=bearer("alice")).status_code == 202
    response = submit(client, small_images, headers=bearer("alice"), seed=1)
    assert assert_problem(response, 429)["type"] == "/problems/too-many-jobs"
    assert int(response.headers["retry-after"]) >= 1
    assert submit(client, small_images, headers=bearer("bob"), seed=1).status_code == 202
    pipeline.gate.set()


# ------------------------------------------------------------------------------ webhooks
class Receiver:
    """A real HTTP receiver on loopback that verifies signatures like a client would."""

    def __init__(self, secret: str, fail: bool = False) -> None:
        self.events: list[dict] = []
        self.raw: list[bytes] = []
        self.attempts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.attempts += 1
                if fail or not verify(body, secret, self.headers.get(SIGNATURE_HEADER, "")):
                    self.send_response(500 if fail else 401)
                else:
                    outer.raw.append(body)
                    outer.events.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooked(embedded_settings):
    return embedded_settings.model_copy(
        update={
            "webhook_secret": "hook-secret",
            "webhook_allow_hosts": "127.0.0.1",
            "webhook_backoff_s": 0.01,
            "webhook_attempts": 3,
        }
    )


def test_webhook_running_and_succeeded_signed(make_client, hooked, small_images):
    receiver = Receiver("hook-secret")
    try:
        client = make_client(hooked)
        job_id = submit(client, small_images, webhook_url=receiver.url).json()["id"]
        done = poll(client, job_id)
        wait_for(lambda: len(receiver.events) >= 2, timeout=10)
        assert [e["status"] for e in receiver.events] == ["running", "succeeded"]
        assert all(e["id"] == job_id for e in receiver.events)
        assert receiver.events[-1] == done, "the terminal webhook is exactly the GET /jobs/{id} body"
    finally:
        receiver.close()


def test_failing_receiver_never_fails_the_job(make_client, hooked, small_images):
    receiver = Receiver("hook-secret", fail=True)
    try:
        client = make_client(hooked)
        job_id = submit(client, small_images, webhook_url=receiver.url).json()["id"]
        assert poll(client, job_id)["status"] == "succeeded"
        delivery = client.app.state.services.webhooks.delivery
        wait_for(lambda: receiver.attempts >= 6 and delivery.idle(), timeout=10)
        assert receiver.attempts == 6, "3 attempts x (running, succeeded), and no more"
    finally:
        receiver.close()


def test_wrong_secret_fails_verification(make_client, hooked, small_images):
    receiver = Receiver("not-the-secret")
    try:
        client = make_client(hooked)
        poll(client, submit(client, small_images, webhook_url=receiver.url).json()["id"])
        wait_for(lambda: receiver.attempts >= 6, timeout=10)
        assert receiver.events == []
    finally:
        receiver.close()


def test_canceled_queued_job_sends_its_terminal_webhook(make_client, hooked, small_images):
    receiver = Receiver("hook-secret")
    pipeline = FakePipeline(gate=threading.Event())
    try:
        client = make_client(hooked, pipeline=pipeline)
        submit(client, small_images)
        assert pipeline.running.wait(10)
        queued = submit(client, small_images, seed=1, webhook_url=receiver.url).json()["id"]
        assert client.delete(f"/jobs/{queued}").json()["status"] == "canceled"
        wait_for(lambda: receiver.events, timeout=10)
        assert [e["status"] for e in receiver.events] == ["canceled"]
        pipeline.gate.set()
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.0.0.5/hook", "private"),
        ("http://192.168.1.1/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://0.0.0.0/", "unspecified"),
        ("ftp://example.com/hook", "http or https"),
        ("http://user:pw@example.com/", "credentials"),
    ],
)
def test_ssrf_refusals_through_the_api(make_client, embedded_settings, small_images, url, reason):
    client = make_client(embedded_settings.model_copy(update={"webhook_secret": "s"}))
    body = assert_problem(submit(client, small_images, webhook_url=url), 422)
    assert body["errors"][0]["field"] == "webhook_url" and reason in body["detail"]


def test_webhooks_need_a_secret(client, small_images):
    body = assert_problem(submit(client, small_images, webhook_url="https://example.com/hook"), 422)
    assert "QALIGN_WEBHOOK_SECRET" in body["detail"]


# ------------------------------------------------------------------------------ expiry
def test_sweep_removes_expired_records_results_and_unreferenced_inputs(tmp_path, embedded_settings):
    from service.cleanup import sweep

    settings = embedded_settings.model_copy(update={"job_ttl": 3600})
    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    store = LocalStore(tmp_path / "objects")
    old = time.time() - 7200
    kept_input, shared_input, orphan_input = b"kept", b"shared", b"orphan"
    for data in (kept_input, shared_input, orphan_input):
        store.put_input(data, "image/png")
        os.utime(store.local_path(input_key(data)), (old, old))

    def job(structure: bytes, created: float, finished: bool) -> Job:
        record = Job(
            id=new_job_id(),
            created_at=utcnow().fromtimestamp(created, tz=utcnow().tzinfo),
            structure_key=input_key(structure),
            appearance_key=input_key(shared_input),
            status="succeeded" if finished else "queued",
            finished_at=utcnow().fromtimestamp(created, tz=utcnow().tzinfo) if finished else None,
            result=JobResult(key=f"results/{'0' * 32}.png", content_type="image/png", width=1, height=1),
        )
        stores.records.create(record)
        store.put(f"results/{record.id}.png", b"png")
        os.utime(store.local_path(f"results/{record.id}.png"), (created, created))
        return record

    expired, live = job(orphan_input, old, True), job(kept_input, time.time(), True)
    store.put("results/" + "f" * 32 + ".png", b"no record")
    os.utime(store.local_path("results/" + "f" * 32 + ".png"), (old, old))
    tmp = tmp_path / "objects" / "inputs" / ".tmp-crashed"
    tmp.write_bytes(b"partial")
    os.utime(tmp, (old, old))

    counts = sweep(stores, store, settings)
    assert counts == {"records": 1, "results": 2, "inputs": 1, "inversions": 0, "temp_files": 1}
    assert stores.records.get(expired.id) is None and stores.records.get(live.id) is not None
    assert store.age(f"results/{expired.id}.png") is None and store.age(f"results/{live.id}.png") is not None
    assert store.age(input_key(orphan_input)) is None
    assert store.age(input_key(kept_input)) is not None and store.age(input_key(shared_input)) is not None
    assert not tmp.exists()
    # Reusing an old input refreshes it, so an expiry sweep right after cannot take it from a new job.
    # (A store that saw it fresh moments ago trusts that for a while; a later one looks again.)
    os.utime(store.local_path(input_key(kept_input)), (old, old))
    LocalStore(tmp_path / "objects").put_input(kept_input, "image/png")
    assert time.time() - store.local_path(input_key(kept_input)).stat().st_mtime < 60


def test_redis_prune_forgets_expired_records_in_the_queue_index(redis_url):
    stores = open_redis_stores(redis_url, ttl=3600, prefix=f"t{new_job_id()}:")
    records = stores.records
    try:
        record = Job(id=new_job_id(), created_at=utcnow(), structure_key="a", appearance_key="b")
        records.create(record)
        records.client.delete(records._key(record.id))  # what the key TTL does after JOB_TTL
        assert records.count_by_status()["queued"] == 1
        assert records.prune() == 1
        assert records.count_by_status()["queued"] == 0
    finally:
        stores.close()
