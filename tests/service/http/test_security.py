"""Security headers, CORS, the Host allow-list, /readyz details and the refusal to start open
(service.http.security, service.http.routes.ops, create_app)."""

from __future__ import annotations

import pytest
from svc_helpers import bearer
from testkit import assert_problem, wait_for

from service.http.security import API_POLICY, PAGE_POLICY, host_allowed


def test_every_answer_carries_nosniff_and_a_policy_against_framing(client):
    page = client.get("/")
    assert page.headers["content-security-policy"] == PAGE_POLICY
    api = client.get("/healthz")
    assert api.headers["content-security-policy"] == API_POLICY
    problem = client.get("/jobs/nope")
    assert problem.headers["content-security-policy"] == API_POLICY
    docs = client.get("/docs")  # the route's own policy, with framing forbidden added
    assert "script-src 'self'" in docs.headers["content-security-policy"]
    for response in (page, api, problem, docs):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"


def _preflight(client, origin: str):
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    return client.options("/transfer", headers=headers)


def test_cors_is_off_by_default(client):
    response = _preflight(client, "https://app.example.com")
    assert "access-control-allow-origin" not in response.headers
    assert (
        "access-control-allow-origin" not in client.get("/healthz", headers={"Origin": "https://x"}).headers
    )


def test_cors_allows_the_configured_origins_only(make_client, embedded_settings):
    client = make_client(
        embedded_settings.model_copy(update={"cors_allow_origins": "https://app.example.com/"})
    )
    allowed = _preflight(client, "https://app.example.com")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in _preflight(client, "https://evil.example").headers


def test_hosts_outside_the_allow_list_are_refused_before_links_are_built(make_client, embedded_settings):
    settings = embedded_settings.model_copy(
        update={"allowed_hosts": "qalign.example.com, *.internal.example"}
    )
    client = make_client(settings)
    assert client.get("/jobs", headers={"Host": "qalign.example.com"}).status_code == 200
    assert client.get("/jobs", headers={"Host": "api.internal.example:8443"}).status_code == 200
    problem = assert_problem(client.get("/jobs", headers={"Host": "attacker.example"}), 400)
    assert "attacker.example" in problem["detail"] and "QALIGN_ALLOWED_HOSTS" in problem["detail"]
    assert client.get("/healthz", headers={"Host": "10.1.2.3:8000"}).status_code == 200, "probes by pod IP"
    pinned = make_client(settings.model_copy(update={"public_base_url": "https://qalign.example.com"}))
    assert pinned.get("/jobs", headers={"Host": "attacker.example"}).status_code == 200, "links ignore Host"


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("a.example", True),
        ("A.EXAMPLE.:80", True),
        ("b.example", False),
        ("x.sub.example", True),
        ("sub.example", False),
    ],
)
def test_host_matching(host, allowed):
    assert host_allowed(host, ("a.example", "*.sub.example")) is allowed


def test_readiness_details_need_a_key_or_the_operator_setting(make_client, keyed):
    client = make_client(keyed)
    wait_for(lambda: client.get("/readyz").status_code == 200)
    assert client.get("/readyz").json() == {"ready": True}
    assert client.get("/readyz", headers={"Authorization": "Bearer wrong"}).json() == {"ready": True}
    detailed = client.get("/readyz", headers=bearer("alice")).json()
    assert detailed["ready"] is True and set(detailed["checks"]) >= {"jobs", "store"}
    public = make_client(keyed.model_copy(update={"readiness_details": True}))
    wait_for(lambda: "checks" in public.get("/readyz").json())


def test_open_mode_shows_readiness_details(client):
    assert "checks" in wait_for(lambda: (r := client.get("/readyz")).status_code == 200 and r.json())


def test_the_api_refuses_to_start_open_when_keys_are_required(embedded_settings, keyed, fake_pipeline):
    from service.http.app import OpenModeRefused, create_app

    with pytest.raises(OpenModeRefused, match="QALIGN_REQUIRE_API_KEYS=false"):
        create_app(embedded_settings.model_copy(update={"require_api_keys": True}))
    app = create_app(
        keyed.model_copy(update={"require_api_keys": True}), pipeline_factory=lambda _s: fake_pipeline
    )
    assert app.state.services.settings.require_api_keys
