"""The caller's identity comes from the HTTPBearer credential FastAPI parsed, not a second parse."""

from __future__ import annotations

from fastapi.security import HTTPAuthorizationCredentials
from testkit import assert_problem

from service.api.deps import bearer
from service.auth import hash_key


def test_the_declared_bearer_credential_is_the_one_used(make_client, embedded_settings):
    """Regression: the HTTPBearer credential was declared but ignored (the header was parsed again),
    so whatever the security scheme produced never reached the key check."""
    client = make_client(embedded_settings.model_copy(update={"api_keys": f"alice:{hash_key('k-alice')}"}))
    assert_problem(client.get("/jobs/" + "0" * 32), 401)
    client.app.dependency_overrides[bearer] = lambda: HTTPAuthorizationCredentials(
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
