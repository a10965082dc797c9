"""URL inputs against a real local HTTPS server (its certificate made here, trusted through
QALIGN_OUTBOUND_CA_BUNDLE), with loopback allowed by QALIGN_INPUT_URL_ALLOW_HOSTS where a test needs it."""

from __future__ import annotations

import base64
import threading

import pytest
from net_helpers import LOOPBACK_ONLY, LocalServer, Reply, make_tls_files, namespace_launcher
from testkit import assert_problem, poll, wait_for

# Names non-loopback addresses (targets the checks must refuse or never reach): every test
# here runs inside a loopback-only network namespace (tests/net_helpers.py).
pytestmark = LOOPBACK_ONLY
test_in_loopback_only_namespace = namespace_launcher(__file__)

MAX_UPLOAD = 200_000


@pytest.fixture
def origin(tmp_path, small_images):
    """An HTTPS server with the two test images and misbehaving paths; ``release`` ends stalls."""
    tls = make_tls_files(tmp_path, names=("localhost",))
    release = threading.Event()
    structure, appearance = small_images

    def respond(seen, handler):
        path = seen.path.split("?")[0]
        if path == "/s.png":
            return Reply(200, structure, {"Content-Type": "image/png"})
        if path == "/a.jpg":
            return Reply(200, appearance, {"Content-Type": "image/jpeg"})
        if path == "/moved":
            return Reply(302, b"", {"Location": "/s.png?via=redirect"})
        if path == "/to-http":
            return Reply(301, b"", {"Location": f"http://127.0.0.1:{server.port}/s.png"})
        if path == "/to-private":
            return Reply(302, b"", {"Location": "https://10.20.30.40/s.png"})
        if path == "/bad-location":
            return Reply(302, b"", {"Location": "https://[::1/x"})
        if path == "/loop":
            return Reply(302, b"", {"Location": "/loop"})
        if path == "/text":
            return Reply(200, b"<html>not an image</html>", {"Content-Type": "text/html"})
        if path == "/declared-big":
            return Reply(200, b"x" * (MAX_UPLOAD + 1), {"Content-Type": "image/png"})
        if path == "/endless":  # chunked, no length: the reader must stop by itself
            handler.send_response(200)
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            chunk = b"\x89PNG" + b"\0" * 65532
            try:
                while not release.is_set():
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # the client hung up, as it should
                pass
            return None
        if path == "/stall":
            release.wait(60)
            return Reply(200, structure)
        return Reply(404, b"no such image")

    server = LocalServer(respond, tls=tls)
    server.tls, server.release = tls, release
    yield server
    release.set()
    server.close()


@pytest.fixture
def url_settings(embedded_settings, origin):
    return embedded_settings.model_copy(
        update={
            "input_url_allow_hosts": "localhost,127.0.0.1,::1",
            "outbound_ca_bundle": origin.tls.ca,
            "max_upload_bytes": MAX_UPLOAD,
            "input_url_timeout_s": 10.0,
        }
    )


def json_body(structure: str, appearance: str, **extra) -> dict:
    return {"structure": structure, "appearance": appearance, "steps": 10, **extra}


def test_json_urls_are_fetched_and_the_job_runs(make_client, url_settings, origin, small_images):
    client = make_client(url_settings)
    body = json_body(origin.url("localhost", "/s.png"), origin.url("localhost", "/a.jpg"))
    response = client.post("/transfer", json=body)
    assert response.status_code == 202, response.text
    assert poll(client, response.json()["id"])["status"] == "succeeded"
    assert sorted(s.path for s in origin.seen) == ["/a.jpg", "/s.png"]
    assert all(s.headers["Host"] == f"localhost:{origin.port}" for s in origin.seen)
    services = client.app.state.services
    record = services.stores.records.get(response.json()["id"])
    assert services.blobs.get(record.structure_key) == small_images[0], "the fetched bytes are the input"


def test_form_fields_may_be_urls_beside_a_file(make_client, url_settings, origin, small_images):
    client = make_client(url_settings)
    files = {"appearance": ("a.jpg", small_images[1], "image/jpeg")}
    response = client.post("/transfer", files=files, data={"structure": origin.url(path="/moved")})
    assert response.status_code == 202, response.text
    assert poll(client, response.json()["id"])["status"] == "succeeded"
    assert [s.path for s in origin.seen] == ["/moved", "/s.png?via=redirect"], "a redirect hop, re-checked"


def test_a_base64_image_and_a_url_mix_in_json(make_client, url_settings, origin, small_images):
    client = make_client(url_settings)
    body = json_body(origin.url(path="/s.png"), base64.b64encode(small_images[1]).decode())
    assert client.post("/transfer", json=body).status_code == 202


@pytest.mark.parametrize(
    ("value", "scheme"),
    [
        ("http://example.com/a.png", "http"),
        ("file:///etc/passwd", "file"),
        ("ftp://example.com/a.png", "ftp"),
    ],
)
def test_only_https_urls_are_accepted(make_client, url_settings, small_images, value, scheme):
    client = make_client(url_settings)
    appearance = base64.b64encode(small_images[1]).decode()
    body = assert_problem(client.post("/transfer", json=json_body(value, appearance)), 422)
    assert body["type"].endswith("/invalid-input-url") and body["errors"][0]["field"] == "structure"
    assert f"{scheme}: scheme" in body["detail"]
    assert "https:// URL" in body["detail"] and "base64" in body["detail"], "the allowed forms are named"
    files = {"structure": ("s.png", small_images[0], "image/png")}
    form = assert_problem(client.post("/transfer", files=files, data={"appearance": value}), 422)
    assert form["errors"][0]["field"] == "appearance" and "a file part or an https:// URL" in form["detail"]


def test_loopback_is_refused_without_the_allow_setting(make_client, url_settings, origin, small_images):
    client = make_client(url_settings.model_copy(update={"input_url_allow_hosts": ""}))
    body = json_body(origin.url("localhost", "/s.png"), base64.b64encode(small_images[1]).decode())
    problem = assert_problem(client.post("/transfer", json=body), 422)
    assert problem["errors"][0]["field"] == "structure" and "loopback" in problem["detail"]
    assert "QALIGN_INPUT_URL_ALLOW_HOSTS" in problem["detail"]
    assert origin.seen == [], "nothing was fetched"


@pytest.mark.parametrize(
    "value", ["https://[::1/a.png", "https://example.com:99999/a.png", "https://exa mple.invalid/a.png"]
)
def test_malformed_urls_are_4xx(make_client, url_settings, small_images, value):
    client = make_client(url_settings)
    body = json_body(value, base64.b64encode(small_images[1]).decode())
    problem = assert_problem(client.post("/transfer", json=body), 422)
    assert problem["errors"][0]["field"] == "structure" and problem["type"].endswith("/invalid-input-url")


@pytest.mark.parametrize(
    ("path", "status", "kind", "fragment"),
    [
        ("/missing.png", 422, "input-fetch-failed", "answered HTTP 404"),
        ("/to-http", 422, "invalid-input-url", "must use https"),
        ("/to-private", 422, "invalid-input-url", "private address 10.20.30.40"),
        ("/loop", 422, "input-fetch-failed", "redirected more than 5 times"),
        ("/bad-location", 422, "input-fetch-failed", "Invalid URL in location header"),
        ("/declared-big", 413, "too-large", f"over the limit of {MAX_UPLOAD} bytes"),
        ("/endless", 413, "too-large", f"over the limit of {MAX_UPLOAD} bytes"),
        ("/text", 400, "not-an-image", "not an image"),
    ],
)
def test_fetch_failures_are_4xx_naming_the_input(
    make_client, url_settings, origin, small_images, path, status, kind, fragment
):
    client = make_client(url_settings)
    body = json_body(base64.b64encode(small_images[0]).decode(), origin.url(path=path))
    problem = assert_problem(client.post("/transfer", json=body), status)
    assert problem["type"].endswith(f"/{kind}") and fragment in problem["detail"]
    assert problem["detail"].startswith("appearance") or problem["errors"][0]["field"] == "appearance"


def test_slow_origin_hits_the_time_limit(make_client, url_settings, origin, small_images):
    client = make_client(url_settings.model_copy(update={"input_url_timeout_s": 0.5}))
    body = json_body(origin.url(path="/stall"), base64.b64encode(small_images[1]).decode())
    problem = assert_problem(client.post("/transfer", json=body), 422)
    assert problem["type"].endswith("/input-fetch-failed") and problem["errors"][0]["field"] == "structure"
    assert "time limit (0.5 s, QALIGN_INPUT_URL_TIMEOUT_S)" in problem["detail"]
    wait_for(lambda: origin.seen, timeout=10)


def test_untrusted_certificate_and_closed_port_fail_cleanly(make_client, url_settings, origin, small_images):
    untrusted = make_client(url_settings.model_copy(update={"outbound_ca_bundle": None}))
    body = json_body(origin.url(path="/s.png"), base64.b64encode(small_images[1]).decode())
    problem = assert_problem(untrusted.post("/transfer", json=body), 422)
    assert problem["type"].endswith("/input-fetch-failed")
    untrusted_reason = problem["detail"].rsplit(": ", 1)[-1]
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    client = make_client(url_settings)
    body = json_body(f"https://127.0.0.1:{closed}/s.png", base64.b64encode(small_images[1]).decode())
    problem = assert_problem(client.post("/transfer", json=body), 422)
    assert problem["errors"][0]["field"] == "structure"
    # An untrusted certificate and a closed port read the same: no oracle of what listens where.
    assert problem["detail"].rsplit(": ", 1)[-1] == untrusted_reason
    assert untrusted_reason == "could not connect or complete the TLS handshake"


def test_a_refused_webhook_costs_no_fetch(make_client, url_settings, origin):
    client = make_client(url_settings.model_copy(update={"webhook_secret": "s"}))
    body = json_body(
        origin.url(path="/s.png"), origin.url(path="/a.jpg"), webhook_url="http://169.254.169.254/hook"
    )
    problem = assert_problem(client.post("/transfer", json=body), 422)
    assert problem["errors"][0]["field"] == "webhook_url" and origin.seen == []
