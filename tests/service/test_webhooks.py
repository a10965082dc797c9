from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from svc_helpers import FakePipeline
from testkit import assert_problem, poll, submit, wait_for

from service.webhooks import SIGNATURE_HEADER, WebhookRefused, check_webhook_url, deliver, sign, verify


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


def test_signature_round_trip():
    body = b'{"id": "abc", "status": "succeeded"}'
    signature = sign(body, "s3cret")
    assert signature.startswith("sha256=") and verify(body, "s3cret", signature)
    assert not verify(body + b" ", "s3cret", signature) and not verify(body, "other", signature)


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
    )
    assert delivered is False and sleeps == [0.1, 0.2]


def test_refused_url_is_not_posted():
    assert deliver("http://localhost/x", b"{}", "k", resolver=lambda h, p: ["127.0.0.1"]) is False


def test_delivery_uses_a_bounded_pool_and_keeps_each_jobs_order():
    """Regression: one unbounded thread was started per webhook; now at most max_workers deliver."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from testkit import wait_for

    from service.webhooks import WebhookDelivery

    release, received, lock = threading.Event(), [], threading.Lock()
    in_flight = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server API
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                in_flight.append(body)
            release.wait(10)
            with lock:
                received.append((body["job"], body["n"]))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    delivery = WebhookDelivery("s", allow_hosts=["127.0.0.1"], attempts=1, max_workers=2)
    before = {t for t in threading.enumerate() if t.name == "qalign-webhook"}
    try:
        for n in range(2):
            for job in range(10):
                delivery.post(f"job{job}", url, json.dumps({"job": job, "n": n}).encode())
        wait_for(lambda: len(in_flight) == 2, timeout=10)
        threads = {t for t in threading.enumerate() if t.name == "qalign-webhook"} - before
        assert len(threads) == 2, "20 events, 10 jobs, and only the pool's 2 threads"
        release.set()
        wait_for(lambda: delivery.idle() and len(received) == 20, timeout=20)
        for job in range(10):
            assert [n for j, n in received if j == job] == [0, 1], "a job's events stay in order"
    finally:
        release.set()
        delivery.close()
        server.shutdown()
        server.server_close()


def test_full_delivery_queue_drops_instead_of_blocking(caplog):
    from service.webhooks import WebhookDelivery

    delivery = WebhookDelivery("s", attempts=1, max_workers=1, max_pending=1)
    delivery._threads.append(object())  # a busy pool: nothing drains during the test
    delivery.post("a", "http://192.0.2.1/h", b"{}")
    delivery.post("b", "http://192.0.2.1/h", b"{}")
    assert delivery._pending == 1 and "queue full" in caplog.text


# ------------------------------------------------------------- through the API (a real receiver)
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
