"""Typed errors of the client: one class per family a caller handles differently, each carrying the
service's RFC 9457 problem details (status, type, title, detail, errors) when the service sent them.

    QAlignError
    ├── BadRequestError        400, 413, 415 and other 4xx: change the request
    │   └── ValidationError    422: a parameter out of range (``errors`` names each field)
    ├── AuthError              401 missing/unknown key, 403 revoked key
    ├── NotFoundError          404 unknown (or another key's) job, 410 result gone
    ├── ConflictError          409 result not ready, Idempotency-Key reused
    ├── RateLimitedError       429 queue full (``retry_after``)
    ├── ServerError            5xx
    │   └── UnavailableError   503 not ready (``retry_after``)
    ├── TransportError         the service could not be reached (connection, read timeout)
    ├── JobTimeoutError        ``wait`` ran out of time (``job``: the last state seen)
    ├── JobFailedError         ``run``: the job ended failed or canceled (``job``)
    └── WebhookVerificationError   ``webhooks.verify`` refused a delivery
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import TYPE_CHECKING

from pydantic import ValidationError as PydanticValidationError

from qalign_schema.problems import FieldProblem, Problem, problem_kind

if TYPE_CHECKING:
    import httpx

    from qalign_schema.jobs import JobOut


class QAlignError(Exception):
    """Base of every client error. ``problem`` is the service's problem details (None when the error
    happened on this side: a transport failure, a wait that timed out)."""

    def __init__(self, message: str, *, problem: Problem | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.problem = problem
        self.retry_after = retry_after

    @property
    def status(self) -> int | None:
        return self.problem.status if self.problem else None

    @property
    def type(self) -> str | None:
        return self.problem.type if self.problem else None

    @property
    def kind(self) -> str | None:
        """The problem's kind, ``type`` without its ``/problems/`` prefix (one of
        ``qalign_schema.problems.PROBLEM_KINDS``, e.g. ``"queue-full"``): what to branch on."""
        return problem_kind(self.type)

    @property
    def title(self) -> str | None:
        return self.problem.title if self.problem else None

    @property
    def detail(self) -> str:
        return self.problem.detail if self.problem else str(self)

    @property
    def errors(self) -> list[FieldProblem]:
        return list(self.problem.errors or []) if self.problem else []


class BadRequestError(QAlignError):
    """The service refused the request as sent (400, 413, 415, other 4xx): change it before retrying."""


class ValidationError(BadRequestError):
    """422: a parameter is out of range, unknown or inconsistent; ``errors`` names each field and what
    is allowed. Also raised before sending, when the parameters fail the same schema locally."""


class AuthError(QAlignError):
    """401: the API key is missing or unknown; 403: it was revoked."""


class NotFoundError(QAlignError):
    """404: no such job for this key (another key's job is not found either); 410: result gone."""


class ConflictError(QAlignError):
    """409: the result is not ready (the job has not succeeded), or an Idempotency-Key was reused with
    a different request."""


class RateLimitedError(QAlignError):
    """429: too many jobs queued (overall or for this key); ``retry_after`` says when to try again."""


class ServerError(QAlignError):
    """5xx: the service failed; the request may be retried."""


class UnavailableError(ServerError):
    """503: the service is not ready (job store, object store, broker or worker down); ``retry_after``."""


class TransportError(QAlignError):
    """The service could not be reached, or the connection broke (after the client's retries)."""


class JobTimeoutError(QAlignError):
    """``wait`` gave up before the job finished; ``job`` is the last state seen (still running)."""

    def __init__(self, message: str, job: JobOut):
        super().__init__(message)
        self.job = job


class JobFailedError(QAlignError):
    """The job ended ``failed`` or ``canceled``; ``job.error`` says why (for failed jobs)."""

    def __init__(self, job: JobOut):
        reason = f": {job.error.type}: {job.error.detail}" if job.error else ""
        super().__init__(f"job {job.id} {job.status}{reason}")
        self.job = job


class WebhookVerificationError(QAlignError):
    """A webhook delivery failed verification (signature, timestamp or body); reject it (e.g. 400)."""


_BY_STATUS: dict[int, type[QAlignError]] = {
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    409: ConflictError,
    410: NotFoundError,
    422: ValidationError,
    429: RateLimitedError,
    503: UnavailableError,
}


def error_class(status: int) -> type[QAlignError]:
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else BadRequestError


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
        return max(0.0, (when - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def problem_of(response: httpx.Response) -> Problem:
    """The response's problem details; a stand-in built from the status when the body is not one
    (a proxy's HTML page, a store's XML error)."""
    try:
        body = response.json()
        if isinstance(body, dict) and "status" in body and "detail" in body:
            body.setdefault("title", _phrase(response.status_code))
            return Problem.model_validate(body)
    except (ValueError, PydanticValidationError):
        pass
    text = " ".join(response.text.split())[:300] if response.content else ""
    return Problem(
        title=_phrase(response.status_code),
        status=response.status_code,
        detail=text or f"HTTP {response.status_code} from {response.request.url}",
    )


def error_from_response(response: httpx.Response) -> QAlignError:
    """The typed error of a refused request (the body must have been read)."""
    problem = problem_of(response)
    message = f"{problem.status} {problem.title}: {problem.detail}"
    return error_class(response.status_code)(
        message, problem=problem, retry_after=parse_retry_after(response.headers.get("retry-after"))
    )


def local_validation_error(exc: PydanticValidationError) -> ValidationError:
    """Parameters refused by the schema before sending, shaped like the service's 422."""
    fields = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error.get("loc", ())) or "parameters"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "extra_forbidden":
            message = "unknown parameter"
        fields.append(FieldProblem(field=field, message=message))
    detail = "; ".join(f"{f.field}: {f.message}" for f in fields)
    problem = Problem(title=_phrase(422), status=422, detail=detail, errors=fields)
    return ValidationError(f"invalid parameters: {detail}", problem=problem)


def local_field_error(field: str, message: str, allowed: str | None = None) -> ValidationError:
    """One input refused before sending (e.g. too many appearances), shaped like the service's 422."""
    problem = Problem(
        title=_phrase(422),
        status=422,
        detail=f"{field}: {message}",
        errors=[FieldProblem(field=field, message=message, allowed=allowed)],
    )
    return ValidationError(f"invalid input: {field}: {message}", problem=problem)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
