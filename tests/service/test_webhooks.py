from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from net_helpers import LOOPBACK_ONLY, LocalServer, Reply, make_tls_files, namespace_launcher, pinned_resolver
from svc_helpers import FakePipeline
from testkit import assert_problem, poll, submit, wait_for

from qalign_schema.signing import signature_matches
from service.webhooks import (
    WebhookRefused,
    check_webhook_url,
    deliver,
    sign,
)

# Names non-loopback addresses (targets the checks must refuse or never reach): every test
# here runs inside a loopback-only network namespace (tests/net_helpers.py).
pytestmark = LOOPBACK_ONLY
test_in_loopback_only_namespace = namespace_launcher(__file__)


def public(host, port):
    return ["93.184.215.14"]


@pytest.mark.parametrize(
    "url,addresses,fragment",
    [
        ("ftp://example.com/x", ["93.184.215.14"], "http or https"),
        ("http:///nohost", ["93.184.215.14"], "no host"),
        ("http://user:pw@example.com/", ["93.184.215.14"], "credentials"),
        ("http://localhost/hook", ["127.0.0.1"], "loopback"),
        ("http://[::1]/hook", ["::1"], "loopback"),
        ("http://internal.example/hook", ["10.1.2.3"], "private"),
        ("http://metadata.example/", ["169.254.169.254"], "link-local"),
        ("http://mixed.example/", ["93.184.215.14", "192.168.1.5"], "private"),
        ("http://mapped.example/", ["::ffff:127.0.0.1"], "loopback"),
        ("http://zero.example/", ["0.0.0.0"], "unspecified"),
    ],
)
def test_ssrf_targets_are_refused(url, addresses, fragment):
    with pytest.raises(WebhookRefused, match=fragment):
        check_webhook_url(url, resolver=lambda host, port: addresses)


def test_public_and_allow_listed_hosts_pass():
    check_webhook_url("https://hooks.example.com/q", resolver=public)
    check_webhook_url("http://127.0.0.1:9/x", allow_hosts=["127.0.0.1"], resolver=lambda h, p: ["127.0.0.1"])


def test_unresolvable_host_is_refused():
    def fail(host, port):
        raise OSError("Name or service not known")

    with pytest.raises(WebhookRefused, match="does not resolve"):
        check_webhook_url("http://nope.invalid/", resolver=fail)


def standard_headers(msg_id, timestamp, body, secret):
    return httpx.Headers(
        {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body),
        }
    )


def signed(body: bytes, headers, secret: str) -> bool:
    """The signature check of a receiver (its timestamp check is the client's, tested there)."""
    return signature_matches(
        secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body, headers["webhook-signature"]
    )


def test_standard_webhooks_signature_round_trip():
    body, now = b'{"id": "abc", "status": "succeeded"}', 1_700_000_000
    headers = standard_headers("job_abc_succeeded", now, body, "s3cret")
    assert headers["webhook-signature"].startswith("v1,")
    assert signed(body, headers, "s3cret")
    assert not signed(body + b" ", headers, "s3cret"), "the body is covered"
    assert not signed(body, headers, "other"), "the key is covered"
    replayed = httpx.Headers({**headers, "webhook-id": "job_abc_running"})
    assert not signed(body, replayed, "s3cret"), "the id is covered"
    later = httpx.Headers({**headers, "webhook-timestamp": str(now + 1)})
    assert not signed(body, later, "s3cret"), "the timestamp is covered"
    several = httpx.Headers({**headers, "webhook-signature": "v1,bm9wZQ== " + headers["webhook-signature"]})
    assert signed(body, several, "s3cret"), "a space-separated list: any one may match"


def test_whsec_secrets_sign_with_the_decoded_key():
    """Standard Webhooks' reference vector (whsec_ secret, base64 HMAC over id.timestamp.body)."""
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == expected


def test_failing_receiver_is_retried_with_backoff_and_never_raises():
    sleeps = []
    delivered = deliver(
        "http://127.0.0.1:9/unreachable",
        b"{}",
        "k",
        allow_hosts=["127.0.0.1"],
        attempts=3,
        backoff_s=0.1,
        timeout_s=0.5,
        sleep=sleeps.append,
        msg_id="m",
    )
    assert not delivered.delivered and "3 attempt(s) failed" in delivered.detail and sleeps == [0.1, 0.2]


def test_refused_url_is_not_posted():
    outcome = deliver("http://localhost/x", b"{}", "k", msg_id="m", resolver=lambda h, p: ["127.0.0.1"])
    assert not outcome.delivered and outcome.detail.startswith("refused") and "loopback" in outcome.detail


def test_webhook_urls_are_logged_without_credentials_or_query(caplog):
    url = "http://localhost:9/x?token=s3cret"
    with caplog.at_level("INFO", logger="qalign.webhooks"):
        deliver(url, b"{}", "k", msg_id="m", resolver=lambda h, p: ["127.0.0.1"])
        deliver(
            url,
            b"{}",
            "k",
            msg_id="m",
            attempts=1,
            allow_hosts=["127.0.0.1"],
            resolver=lambda h, p: ["127.0.0.1"],
        )
    logged = [getattr(r, "url", None) for r in caplog.records]
    assert logged and set(logged) == {"http://localhost:9/x"}, logged
    assert "s3cret" not in caplog.text


def test_webhook_id_is_stable_across_retries_and_https_is_verified(tmp_path):
    """A receiver failing once: the retry carries the same webhook-id and a fresh valid signature,
    over HTTPS to a host name pinned to the checked address (certificate checked for that name)."""
    tls = make_tls_files(tmp_path, names=("hook.test",))
    answers = iter([500, 204])
    server = LocalServer(lambda seen, handler: Reply(next(answers)), tls=tls)
    resolver = pinned_resolver({"hook.test": ["127.0.0.1"]})
    try:
        outcome = deliver(
            server.url("hook.test", "/hook"),
            b'{"id": "j"}',
            "whsec_c2VjcmV0LWtleS1ieXRlcw==",
            msg_id="job_j_succeeded",
            allow_hosts=["127.0.0.1"],
            attempts=3,
            backoff_s=0,
            ca_bundle=str(tls.ca),
            resolver=resolver,
        )
        assert outcome[:2] == (True, "HTTP 204")
        first, second = server.seen
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == "job_j_succeeded"
        for seen in (first, second):
            headers = httpx.Headers(seen.headers)
            assert signed(seen.body, headers, "whsec_c2VjcmV0LWtleS1ieXRlcw==")
            assert headers["host"] == f"hook.test:{server.port}"
            assert "x-qalign-signature" not in headers, "the first version's body-only signature is gone"
        assert resolver.calls == ["hook.test", "hook.test"], "one look-up per attempt, at its check"
    finally:
        server.close()


# ------------------------------------------------------------- through the API (a real receiver)
def events_done(client) -> bool:
    """The app's outbox drainer has nothing in hand and the outbox is empty."""
    services = client.app.state.services
    return services.events.idle() and services.stores.outbox.count() == 0


class Receiver:
    """A real HTTP receiver on loopback that verifies signatures like a client would."""

    def __init__(self, secret: str, fail: bool = False) -> None:
        self.events: list[dict] = []
        self.raw: list[bytes] = []
        self.attempts = 0
        self.headers: list[httpx.Headers] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.attempts += 1
                outer.headers.append(httpx.Headers(dict(self.headers.items())))
                if fail or not signed(body, httpx.Headers(dict(self.headers.items())), secret):
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
        wait_for(lambda: receiver.attempts >= 6 and events_done(client), timeout=10)
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


def test_webhook_ids_name_the_job_and_event(make_client, hooked, small_images):
    receiver = Receiver("hook-secret")
    try:
        client = make_client(hooked)
        job_id = submit(client, small_images, webhook_url=receiver.url).json()["id"]
        poll(client, job_id)
        wait_for(lambda: len(receiver.events) >= 2, timeout=10)
        ids = [h["webhook-id"] for h in receiver.headers]
        final = client.app.state.services.stores.records.get(job_id).revision
        started = re.fullmatch(rf"job_{job_id}_running_(\d+)", ids[0])
        assert started and 2 <= int(started[1]) < final, (
            "the revision of the claim, a write after the submission"
        )
        assert ids[1:] == [f"job_{job_id}_succeeded"]
    finally:
        receiver.close()


@pytest.mark.parametrize("encoding", ["multipart-repeated", "multipart-comma", "json"])
def test_events_filter_sends_only_the_chosen_events(make_client, hooked, small_images, encoding):
    import base64

    receiver = Receiver("hook-secret")
    try:
        client = make_client(hooked)
        if encoding == "json":
            body = {
                "structure": base64.b64encode(small_images[0]).decode(),
                "appearance": base64.b64encode(small_images[1]).decode(),
                "webhook_url": receiver.url,
                "webhook_events_filter": ["completed"],
            }
            response = client.post("/transfer", json=body)
        else:
            files = {"structure": ("s.png", small_images[0]), "appearance": ("a.jpg", small_images[1])}
            events = ["completed"] if encoding == "multipart-comma" else ["completed", "completed"]
            data = {"webhook_url": receiver.url, "webhook_events_filter": events}
            response = client.post("/transfer", files=files, data=data)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        poll(client, job_id)
        wait_for(lambda: receiver.events and events_done(client), timeout=10)
        assert [e["status"] for e in receiver.events] == ["succeeded"], "no start event"
        record = client.app.state.services.stores.records.get(job_id)
        assert record.webhook_events == ["completed"]
    finally:
        receiver.close()


def test_start_only_filter_and_both_in_one_field(make_client, hooked, small_images):
    receiver = Receiver("hook-secret")
    try:
        client = make_client(hooked)
        hook = {"webhook_url": receiver.url}
        start_only = submit(client, small_images, **hook, webhook_events_filter="start").json()
        poll(client, start_only["id"])
        both = submit(client, small_images, seed=3, **hook, webhook_events_filter="start, completed")
        poll(client, both.json()["id"])
        wait_for(lambda: len(receiver.events) >= 3 and events_done(client), timeout=10)
        by_job = {}
        for event in receiver.events:
            by_job.setdefault(event["id"], []).append(event["status"])
        assert by_job == {start_only["id"]: ["running"], both.json()["id"]: ["running", "succeeded"]}
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("finished", "unknown event(s) finished"), ("start,bogus", "unknown event(s) bogus"), (",", "empty")],
)
def test_invalid_events_filter_is_a_422_naming_the_field(make_client, hooked, small_images, value, fragment):
    client = make_client(hooked)
    body = assert_problem(
        submit(client, small_images, webhook_url="https://example.com/h", webhook_events_filter=value), 422
    )
    assert body["errors"][0]["field"] == "webhook_events_filter" and fragment in body["detail"]
    assert "start, completed" in body["errors"][0]["allowed"]


def test_invalid_events_filter_in_json_is_a_422(make_client, hooked, small_images):
    import base64

    client = make_client(hooked)
    body = {
        "structure": base64.b64encode(small_images[0]).decode(),
        "appearance": base64.b64encode(small_images[1]).decode(),
        "webhook_events_filter": ["done"],
    }
    problem = assert_problem(client.post("/transfer", json=body), 422)
    assert problem["errors"][0]["field"].startswith("webhook_events_filter")


def test_undelivered_events_are_on_the_job_record_and_counted(make_client, hooked, small_images):
    receiver = Receiver("hook-secret", fail=True)
    try:
        client = make_client(hooked)
        job_id = submit(client, small_images, webhook_url=receiver.url).json()["id"]
        poll(client, job_id)
        records = client.app.state.services.stores.records
        wait_for(lambda: len(records.get(job_id).webhook_undelivered) == 2, timeout=20)
        entries = records.get(job_id).webhook_undelivered
        assert [(e.status, e.reason) for e in entries] == [("running", "failed"), ("succeeded", "failed")]
        assert re.fullmatch(rf"job_{job_id}_running_\d+", entries[0].webhook_id)
        assert entries[1].webhook_id == f"job_{job_id}_succeeded"
        assert "HTTP 500" in entries[0].detail
        metrics = client.get("/metrics").text
        assert 'qalign_webhooks_undelivered_total{reason="failed"} 2.0' in metrics
        assert client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"
    finally:
        receiver.close()


def test_a_stalled_receiver_holds_back_only_its_own_jobs_events(make_client, hooked, small_images):
    """Events of different jobs go out in parallel (WEBHOOK_WORKERS at once): one receiver that
    stalls delays its own job's event, not the others'; its event goes out once it answers."""
    release = threading.Event()
    slow = LocalServer(lambda seen, handler: release.wait(30) and Reply(204))
    fast = Receiver("hook-secret")
    completed = {"webhook_events_filter": "completed"}
    try:
        client = make_client(hooked.model_copy(update={"webhook_workers": 2, "webhook_attempts": 1}))
        stalled = submit(client, small_images, webhook_url=slow.url(path="/h"), **completed).json()["id"]
        poll(client, stalled)
        wait_for(lambda: slow.seen, timeout=20)
        others = [
            submit(client, small_images, seed=n, webhook_url=fast.url, **completed).json()["id"]
            for n in range(1, 4)
        ]
        for job_id in others:
            poll(client, job_id)
        wait_for(lambda: len(fast.events) == 3, timeout=20)
        assert sorted(e["id"] for e in fast.events) == sorted(others) and not release.is_set()
        release.set()
        wait_for(lambda: events_done(client), timeout=20)
        assert [seen.headers["webhook-id"] for seen in slow.seen] == [f"job_{stalled}_succeeded"]
    finally:
        release.set()
        slow.close()
        fast.close()


def test_a_malformed_whsec_secret_is_refused_at_start():
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="not base64"):
        Settings(_env_file=None, webhook_secret="whsec_not base64!")
    assert Settings(_env_file=None, webhook_secret="whsec_c2VjcmV0").webhook_secret


def test_a_host_that_does_not_resolve_yet_is_retried():
    """DNS trouble at delivery time may pass: retried like a failed POST, then delivered."""
    server = LocalServer(lambda seen, handler: Reply(204))
    answers = iter([OSError("Temporary failure in name resolution"), ["127.0.0.1"]])

    def flaky(host, port):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    sleeps = []
    try:
        outcome = deliver(
            server.url("hooks.test", "/h"),
            b"{}",
            "k",
            msg_id="m",
            allow_hosts=["127.0.0.1"],
            attempts=2,
            backoff_s=0.01,
            resolver=flaky,
            sleep=sleeps.append,
        )
        assert outcome[:2] == (True, "HTTP 204") and sleeps == [0.01] and len(server.seen) == 1
    finally:
        server.close()


def test_the_sender_sends_nothing_for_an_erased_job_and_records_what_it_gives_up(tmp_path, hooked):
    """WebhookSender, the drainer's sink: an event whose job is gone (erased, expired) is dropped
    unsent; one whose receiver fails every attempt is counted and noted on its record."""
    from svc_helpers import claim, new_job

    from service.backends.blobs import LocalBlobStore
    from service.backends.sqlite_records import open_sqlite_stores
    from service.webhooks import WebhookSender

    server = LocalServer(lambda seen, handler: Reply(500))
    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    try:
        sender = WebhookSender(
            hooked.model_copy(update={"webhook_attempts": 2}), LocalBlobStore(tmp_path), stores
        )
        erased, kept = (new_job(stores, webhook_url=server.url(path="/h")) for _ in range(2))
        claim(stores, erased.id, "w:1")
        claim(stores, kept.id, "w:1")
        (gone_event, kept_event) = stores.outbox.pending(10)
        stores.records.delete(erased.id)
        assert sender.send(gone_event, threading.Event()) and server.seen == []
        assert sender.send(kept_event, threading.Event()) and len(server.seen) == 2
        (note,) = stores.records.get(kept.id).webhook_undelivered
        assert note.webhook_id == kept_event.id == f"job_{kept.id}_running_{kept_event.job.revision}"
        assert note.reason == "failed"
        assert stores.counters.snapshot("webhooks_undelivered") == {"failed": 1}
    finally:
        stores.close()
        server.close()


def test_the_embedded_time_limit_fails_a_stuck_job_with_one_terminal_webhook(
    make_client, hooked, small_images
):
    """QALIGN_JOB_TIME_LIMIT in embedded mode: a run that would never end is stopped at its next
    step, failed with time_limit, announced once, and the only worker is free for the next job."""
    receiver = Receiver("hook-secret")
    stuck = FakePipeline(gate=threading.Event())  # never released: only the time limit ends it
    try:
        client = make_client(hooked.model_copy(update={"job_time_limit": 1}), pipeline=stuck)
        job_id = submit(client, small_images, webhook_url=receiver.url).json()["id"]
        failed = poll(client, job_id, timeout=60)
        assert failed["status"] == "failed" and failed["error"]["type"] == "time_limit"
        wait_for(lambda: len(receiver.events) >= 2 and events_done(client), timeout=20)
        assert [e["status"] for e in receiver.events] == ["running", "failed"]
        stuck.gate.set()
        assert poll(client, submit(client, small_images, seed=1).json()["id"])["status"] == "succeeded"
    finally:
        receiver.close()


def test_a_stop_during_the_backoff_ends_delivery_at_once_as_interrupted():
    """The process is stopping: the backoff (an hour here) ends at once, no further attempt is
    made, and the outcome says to try again later."""
    stop = threading.Event()
    stop.set()
    outcome = deliver(
        "http://127.0.0.1:9/unreachable",
        b"{}",
        "k",
        allow_hosts=["127.0.0.1"],
        attempts=3,
        backoff_s=3600,
        timeout_s=0.5,
        msg_id="m",
        stop=stop,
    )
    assert outcome.interrupted and not outcome.delivered
    assert outcome.detail.startswith("stopped after 1 attempt(s), last: ")
