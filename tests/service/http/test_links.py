"""Absolute links in job objects: configured base, the request's base, trusted proxy headers."""

from __future__ import annotations

import httpx
import pytest
from svc_helpers import bearer
from testkit import poll, submit

from service.http.links import TrustedPeers


def _links(base: str, job_id: str) -> dict:
    own = f"{base}/jobs/{job_id}"
    return {
        "get": own,
        "cancel": own,
        "result": f"{own}/result",
        "events": f"{own}/events",
        "results": [f"{own}/results/0"],
    }


def test_links_are_absolute_under_the_request_base(client, small_images):
    job = submit(client, small_images).json()
    assert job["urls"] == _links("http://testserver", job["id"])
    done = poll(client, job["id"])
    assert done["urls"] == job["urls"]
    assert done["result"]["url"] == done["urls"]["result"], "local store: result.url is absolute too"
    assert client.get(done["result"]["url"]).status_code == 200
    assert client.get("/jobs").json()["jobs"][0]["urls"] == job["urls"]


def test_configured_public_base_wins_over_request_and_proxy(make_client, embedded_settings, small_images):
    settings = embedded_settings.model_copy(
        update={"public_base_url": "https://qalign.example.com/api/", "forwarded_allow_ips": "*"}
    )
    client = make_client(settings)
    proxied = {"X-Forwarded-Proto": "http", "X-Forwarded-Host": "internal:9000"}
    job = submit(client, small_images, headers=proxied).json()
    assert job["urls"] == _links("https://qalign.example.com/api", job["id"])
    assert (
        poll(client, job["id"])["result"]["url"] == f"https://qalign.example.com/api/jobs/{job['id']}/result"
    )


def test_links_are_fixed_at_submission(make_client, embedded_settings, small_images):
    """A poll through another address shows the links the job was submitted with (webhooks too)."""
    client = make_client(embedded_settings.model_copy(update={"forwarded_allow_ips": "*"}))
    job = submit(client, small_images, headers={"X-Forwarded-Host": "first.example"}).json()
    later = client.get(f"/jobs/{job['id']}", headers={"X-Forwarded-Host": "second.example"}).json()
    assert later["urls"]["get"] == f"http://first.example/jobs/{job['id']}"


def test_trusted_proxy_headers_make_the_links(make_client, embedded_settings, small_images):
    client = make_client(embedded_settings.model_copy(update={"forwarded_allow_ips": "*"}))
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "qalign.example.org, inner.proxy"}
    job = submit(client, small_images, headers=headers).json()
    assert job["urls"] == _links("https://qalign.example.org", job["id"])


def test_untrusted_peers_cannot_choose_the_links(client, small_images):
    """The test client's peer is not in the default FORWARDED_ALLOW_IPS (127.0.0.1)."""
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example"}
    job = submit(client, small_images, headers=headers).json()
    assert job["urls"]["get"] == f"http://testserver/jobs/{job['id']}"


def test_running_service_honours_its_loopback_proxy(make_server, small_images):
    """Real uvicorn, peer 127.0.0.1 (trusted by default), as behind a local reverse proxy."""
    live = make_server()
    with httpx.Client(base_url=live.url, timeout=30) as http:
        plain = submit(http, small_images).json()
        assert plain["urls"]["get"] == f"{live.url}/jobs/{plain['id']}"
        headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "photos.example.net"}
        proxied = submit(http, small_images, headers=headers).json()
        assert proxied["urls"] == _links("https://photos.example.net", proxied["id"])
        done = poll(http, proxied["id"])
        assert done["result"]["url"] == f"https://photos.example.net/jobs/{proxied['id']}/result"


def test_links_of_another_owner_are_not_reachable(make_client, keyed, small_images):
    client = make_client(keyed)
    job = submit(client, small_images, headers=bearer("alice")).json()
    urls = [url for link in job["urls"].values() for url in (link if isinstance(link, list) else [link])]
    assert len(urls) == 5
    for url in urls:
        assert client.get(url, headers=bearer("bob")).status_code == 404


@pytest.mark.parametrize(
    ("spec", "peer", "trusted"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "10.0.0.5", False),
        ("10.0.0.0/8, 192.168.1.1", "10.20.30.40", True),
        ("10.0.0.0/8", "testclient", False),
        ("*", "testclient", True),
        ("", "127.0.0.1", False),
    ],
)
def test_trusted_peers(spec, peer, trusted):
    assert (peer in TrustedPeers(spec)) is trusted
