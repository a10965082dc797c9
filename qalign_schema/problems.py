"""RFC 9457 problem details: every refusal of the API, and what the client's errors carry."""

from __future__ import annotations

from http import HTTPStatus
from typing import Literal

from pydantic import BaseModel, Field

#: Every problem type the API answers with (``type`` is ``/problems/<kind>``): a closed set, so a
#: client can branch on it. Its meanings: PROBLEM_KINDS (docs/service.md's table is checked against it).
ProblemKind = Literal[
    "bad-request",
    "not-an-image",
    "host-not-allowed",
    "unauthorized",
    "forbidden",
    "not-found",
    "job-not-found",
    "result-not-found",
    "method-not-allowed",
    "body-stalled",
    "idempotency-key-reused",
    "idempotency-key-in-progress",
    "result-not-ready",
    "result-gone",
    "too-large",
    "unsupported-media-type",
    "invalid-parameters",
    "missing-part",
    "too-many-appearances",
    "repeated-field",
    "invalid-webhook-url",
    "invalid-input-url",
    "input-fetch-failed",
    "rate-limited",
    "too-many-jobs",
    "queue-full",
    "headers-too-large",
    "internal-error",
    "not-ready",
]
#: What each problem type means, with its status.
PROBLEM_KINDS: dict[ProblemKind, str] = {
    "bad-request": "400: the request could not be read (invalid JSON or base64, a malformed multipart "
    "body, an Idempotency-Key out of its rule)",
    "not-an-image": "400: an image that is no image, or corrupt or truncated",
    "host-not-allowed": "400: the Host header names no host this service answers for (ALLOWED_HOSTS)",
    "unauthorized": "401: no API key, or an unknown one",
    "forbidden": "403: the API key has been revoked",
    "not-found": "404: no endpoint at this path",
    "job-not-found": "404: no such job for this caller",
    "result-not-found": "404: the job has no result at this index",
    "method-not-allowed": "405: the endpoint does not take this method",
    "body-stalled": "408: the request body stopped arriving for BODY_TIMEOUT_S; the connection is closed",
    "idempotency-key-reused": "409: the Idempotency-Key was used with a different request",
    "idempotency-key-in-progress": "409: a request with this Idempotency-Key is still being submitted; "
    "retry after Retry-After",
    "result-not-ready": "409: the job has not succeeded (yet)",
    "result-gone": "410: the result has expired or was erased",
    "too-large": "413: a body, a file or an image's pixel count over its limit (the detail names it)",
    "unsupported-media-type": "415: an image type or a body type the service does not take",
    "invalid-parameters": "422: a parameter out of range, unknown or inconsistent (errors name each)",
    "missing-part": "422: a required image is missing",
    "too-many-appearances": "422: more appearance images than one job takes",
    "repeated-field": "422: a field that takes one value was sent more than once",
    "invalid-webhook-url": "422: webhook_url is refused (scheme, length, or a non-public address)",
    "invalid-input-url": "422: an image URL is refused (scheme, length, or a non-public address)",
    "input-fetch-failed": "422: an image URL could not be fetched",
    "rate-limited": "429: this key's submissions in the rate-limit window are used up; retry after "
    "Retry-After",
    "too-many-jobs": "429: this key has its limit of unfinished jobs; retry after Retry-After",
    "queue-full": "429: the queue is full; retry after Retry-After",
    "headers-too-large": "431: the request line and headers over MAX_HEADER_BYTES, or too many headers",
    "internal-error": "500: a fault in the service (never a caller's input); the logs have the details",
    "not-ready": "503: a dependency (job store, object store, broker, worker) is down; nothing was done; "
    "retry after Retry-After",
}


class FieldProblem(BaseModel):
    field: str
    message: str
    allowed: str | None = Field(None, description="The accepted values or range of the field.")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(
        "about:blank",
        description="`/problems/<kind>`, one of: " + ", ".join(PROBLEM_KINDS) + " (docs/service.md says "
        "what each means); `about:blank` only on problems a client builds itself.",
    )
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldProblem] | None = None

    @classmethod
    def of(
        cls,
        status: int,
        detail: str,
        *,
        kind: ProblemKind | None = None,
        title: str | None = None,
        instance: str | None = None,
        errors: list[FieldProblem] | None = None,
    ) -> Problem:
        """A problem of ``kind`` (its type ``/problems/<kind>``; None: about:blank), titled with the
        status's phrase unless ``title`` is given."""
        if title is None:
            title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        return cls(
            type=problem_type(kind),
            title=title,
            status=status,
            detail=detail,
            instance=instance,
            errors=errors,
        )


PROBLEM_TYPE_PREFIX = "/problems/"


def problem_type(kind: ProblemKind | None) -> str:
    """The ``type`` URI of a problem kind: ``/problems/<kind>``, or ``about:blank`` without one."""
    return f"{PROBLEM_TYPE_PREFIX}{kind}" if kind else "about:blank"


def problem_kind(type_uri: str | None) -> str | None:
    """The kind a problem ``type`` URI names (``/problems/queue-full`` -> ``queue-full``); None for
    ``about:blank`` or a type that is not one of ours."""
    if type_uri is None or not type_uri.startswith(PROBLEM_TYPE_PREFIX):
        return None
    return type_uri.removeprefix(PROBLEM_TYPE_PREFIX)
