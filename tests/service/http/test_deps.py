"""The caller's identity comes from the HTTPBearer credential FastAPI parsed, not a second parse."""

from __future__ import annotations

import json
import logging

from fastapi.security import HTTPAuthorizationCredentials
from svc_helpers import bearer
from testkit import assert_problem, poll, submit

from service.auth import hash_key
from service.http.deps import bearer as bearer_scheme
from service.jobs import new_job_id


def test_the_declared_bearer_credential_is_the_one_used(make_client, embedded_settings):
    """Regression: the HTTPBearer credential was declared but ignored (the header was parsed again),
    so whatever the security scheme produced never reached the key check."""
    client = make_client(embedded_settings.model_copy(update={"api_keys": f"alice:{hash_key('k-alice')}"}))
    assert_problem(client.get("/jobs/" + "0" * 32), 401)
    client.app.dependency_overrides[bearer_scheme] = lambda: HTTPAuthorizationCredentials(
        scheme="Bearer", credentials="k-alice"
    )
    # No Authorization header at all: only the credential from the dependency can authenticate.
    assert_problem(client.get("/jobs/" + "0" * 32), 404)


def test_metrics_key_check_uses_the_credential_too(make_client, embedded_settings):
    settings = embedded_settings.model_copy(
        update={"api_keys": f"ops:{hash_key('k-ops')}", "metrics_require_key": True}
    )
    client = make_client(settings)
    assert_problem(client.get("/metrics"), 401)
    assert client.get("/metrics", headers={"Authorization": "Bearer k-ops"}).status_code == 200


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
