from __future__ import annotations

import pytest

from service.webhooks import WebhookRefused, check_webhook_url, deliver, sign, verify


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
