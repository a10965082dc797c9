"""The published OpenAPI document holds for live responses: schemathesis generates requests from it
and checks every response (status, content type, headers, body schema, auth) against it, on the
embedded service with the tiny model, over real HTTP."""

from __future__ import annotations

import pytest
import schemathesis
import schemathesis.core.failures
import testkit
from hypothesis import HealthCheck, given, settings
from svc_helpers import LIVE_KEY as KEY

pytestmark = pytest.mark.timeout(240)

AUTH = {"Authorization": f"Bearer {KEY}"}


#: What JSON Schema cannot say about POST /transfer, and the service checks: that the bytes of a
#: schema-valid upload are a PNG, JPEG or WebP image (400 not an image or corrupt, 415 another image or
#: document type) and that a step range has start <= end (422). Only for that operation, schema-valid
#: requests may be refused with these statuses; every other
#: check (status declared, content type, headers, body schema, auth) runs unchanged.
CONFIG = {
    "operations": [
        {
            "include-path": "/transfer",
            "include-method": "POST",
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": [
                        *("2xx", "3xx", "400", "401", "403", "404", "409", "415", "422", "429", "5xx")
                    ]
                }
            },
        },
        {
            # The cursor is opaque: only a next_cursor the service issued is one (else 422 naming it).
            "include-path": "/jobs",
            "include-method": "GET",
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": [*("2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx")]
                }
            },
        },
    ]
}


@pytest.fixture(scope="module")
def api_schema(live_keyed_service):
    config = schemathesis.config.SchemathesisConfig.from_dict(CONFIG)
    return schemathesis.openapi.from_url(f"{live_keyed_service.url}/openapi.json", config=config)


def test_a_real_jobs_responses_match_the_published_schema(api_schema, live_keyed_service, photo_bytes):
    """Random ids only reach 404s: a finished job's object, result and cancel answers are checked too."""
    import httpx

    with httpx.Client(base_url=live_keyed_service.url, headers=AUTH, timeout=60) as client:
        files = [("structure", ("s.png", photo_bytes[0], "image/png"))]
        files += [("appearance", (f"a{k}.jpg", photo_bytes[1], "image/jpeg")) for k in range(2)]
        data = {"steps": "4", "skip_steps": "0", "size": "64"}
        job = client.post("/transfer", files=files, data=data).json()
        done = testkit.poll(client, job["id"], headers=AUTH, timeout=180)
    assert done["status"] == "succeeded", done
    assert len(done["results"]) == 2
    routes = (
        ("GET", "/jobs/{job_id}", {}),
        ("GET", "/jobs/{job_id}/events", {}),
        ("GET", "/jobs/{job_id}/result", {}),
        ("GET", "/jobs/{job_id}/results/{k}", {"k": 1}),
        ("DELETE", "/jobs/{job_id}", {}),
    )
    for method, path, more in routes:
        case = api_schema[path][method].Case(path_parameters={"job_id": job["id"], **more}, headers=AUTH)
        response = case.call_and_validate()
        assert response.status_code == 200, (path, response.text[:300])
    beyond = api_schema["/jobs/{job_id}/results/{k}"]["GET"].Case(
        path_parameters={"job_id": job["id"], "k": 2}, headers=AUTH
    )
    response = beyond.call_and_validate()
    assert response.status_code == 404 and "0 to 1" in response.json()["detail"]


#: Generated requests per operation: small, so the test stays well under a minute on a busy machine.
EXAMPLES = 8


def test_live_responses_match_the_published_schema(api_schema):
    """Every operation; failures of all of them are reported together."""
    failures, labels = [], []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        labels.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case):
            case.call_and_validate(headers=AUTH)

        try:
            check()
        except (AssertionError, schemathesis.core.failures.FailureGroup) as exc:
            failures.append(f"{operation.label}: {exc}")
    assert {"POST /transfer", "GET /jobs/{job_id}", "GET /jobs/{job_id}/result"} <= set(labels)
    assert "GET /jobs/{job_id}/results/{k}" in labels
    assert not failures, "\n\n".join(failures)


def test_every_operation_has_examples_that_fit_its_schemas(api_schema):
    """A generator or a reader gets an example per operation (request body and responses), and every
    JSON example validates against the schema it illustrates."""
    import jsonschema_rs

    spec = api_schema.raw_schema
    components = {"components": spec["components"]}

    def validate(schema: dict, example, where: str) -> None:
        validator = jsonschema_rs.validator_for({**schema, **components})
        errors = [e.message for e in validator.iter_errors(example)]
        assert not errors, (where, errors)

    for path, item in spec["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            examples = 0
            for media, content in operation.get("requestBody", {}).get("content", {}).items():
                assert "example" in content, (where, media)
                if media.endswith("json"):
                    validate(content["schema"], content["example"], where)
            for status, response in operation["responses"].items():
                assert status != "422" or "HTTPValidationError" not in str(response), where
                for media, content in response.get("content", {}).items():
                    if "example" in content:
                        examples += 1
                        if media.endswith("json") or media == "text/event-stream":
                            validate(content["schema"], content["example"], f"{where} {status}")
                    if media.endswith("json"):
                        assert "example" in content, (where, status, media)
            assert examples, f"{where}: no example"
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/readyz":
                    assert list(response["content"]) == ["application/problem+json"], (where, status)
