"""Domain errors become problem details in one place; every 503 and 429 carries Retry-After."""

from __future__ import annotations

import pytest

from service.auth import AuthError
from service.backends.blobs import BlobStoreDown
from service.http.problems import domain_problem
from service.jobs import JobStoreDown
from service.usecases.errors import (
    IdempotencyConflict,
    JobNotFound,
    NotReady,
    QueueFull,
    ResultGone,
    ResultNotReady,
)


@pytest.mark.parametrize(
    ("error", "status", "kind", "retry_after"),
    [
        (NotReady("broker down"), 503, "not-ready", "5"),
        (JobStoreDown("redis down"), 503, "not-ready", "5"),
        (BlobStoreDown("s3 down"), 503, "not-ready", "5"),
        (QueueFull("full", retry_after=12), 429, "queue-full", "12"),
        (QueueFull("mine", retry_after=3, per_key=True), 429, "too-many-jobs", "3"),
        (IdempotencyConflict("other body"), 409, "idempotency-key-reused", None),
        (IdempotencyConflict("busy", in_progress=True), 409, "idempotency-key-in-progress", "1"),
        (JobNotFound("no job"), 404, "job-not-found", None),
        (ResultNotReady("running"), 409, "result-not-ready", None),
        (ResultGone("gone"), 410, "result-gone", None),
        (AuthError(403, "revoked"), 403, "forbidden", None),
    ],
)
def test_each_domain_error_has_one_problem(error, status, kind, retry_after):
    problem = domain_problem(error)
    assert problem.status == status and problem.kind == kind and problem.detail
    assert (problem.headers or {}).get("Retry-After") == retry_after


def test_store_errors_say_which_store():
    assert "job store" in domain_problem(JobStoreDown("x")).detail
    assert "object store" in domain_problem(BlobStoreDown("x")).detail


def test_401_names_the_scheme():
    assert domain_problem(AuthError(401, "missing")).headers["WWW-Authenticate"].startswith("Bearer")
