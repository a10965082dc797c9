"""RFC 9457 problem details for every error the API returns, FastAPI's own ones included.

Use cases raise domain errors (service.usecases.errors, JobStoreDown, BlobStoreDown, AuthError);
``domain_problem`` is the one place that maps them to a status, a problem type and headers, so
every 503 and 429 carries its Retry-After.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from qalign_schema.problems import ProblemKind
from service.auth import AuthError
from service.backends.blobs import BlobStoreDown
from service.http.schemas import FieldProblem, Problem, allowed_values
from service.jobs import JobStoreDown
from service.usecases.errors import (
    DomainError,
    IdempotencyConflict,
    InvalidInput,
    JobNotFound,
    NotReady,
    QueueFull,
    RateLimited,
    ResultGone,
    ResultNotFound,
    ResultNotReady,
)

PROBLEM_JSON = "application/problem+json"
#: ASGI scope key set when the client left mid-request: the answer reaches nobody, and the request
#: metrics count it as 499 (client closed request), not as the caller's 400.
CLIENT_GONE = "qalign.client_gone"
#: Retry-After of a 503 when the cause gives no better estimate (a dependency coming back).
UNAVAILABLE_RETRY_S = 5
logger = logging.getLogger("qalign.api")


class ApiProblem(Exception):
    """Raised anywhere in request handling; becomes a problem-details response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: ProblemKind | None = None,
        errors: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.kind, self.errors, self.headers = status, detail, kind, errors, headers


def problem_response(
    status: int,
    detail: str,
    *,
    kind: ProblemKind | None = None,
    instance: str | None = None,
    errors: list[FieldProblem] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = Problem.of(status, detail, kind=kind, instance=instance, errors=errors)
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


def status_kind(status: int) -> ProblemKind:
    """The problem type of a refusal that no handler typed (Starlette's own: no endpoint, a method the
    endpoint does not take), from the closed set of problem types."""
    return _STATUS_KINDS.get(status) or ("internal-error" if status >= 500 else "bad-request")


_STATUS_KINDS: dict[int, ProblemKind] = {
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    413: "too-large",
    415: "unsupported-media-type",
    503: "not-ready",
}


def field_problems(
    exc: ValidationError | RequestValidationError, *, skip_prefix: int = 0
) -> list[FieldProblem]:
    """One entry per invalid field: its name, what was wrong, the allowed values or range."""
    problems = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())][skip_prefix:]
        field = ".".join(loc) or "parameters"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        if error.get("type") == "missing":
            message = "this field is required"
        elif error.get("type") == "extra_forbidden":
            message = "unknown parameter"
        name = loc[0] if loc else ""
        problems.append(FieldProblem(field=field, message=message, allowed=allowed_values(name)))
    return problems


def describe(problems: list[FieldProblem]) -> str:
    parts = []
    for p in problems:
        parts.append(f"{p.field}: {p.message}" + (f" (allowed: {p.allowed})" if p.allowed else ""))
    return "; ".join(parts)


def validation_problem(exc: ValidationError, *, skip_prefix: int = 0) -> ApiProblem:
    problems = field_problems(exc, skip_prefix=skip_prefix)
    return ApiProblem(422, describe(problems), kind="invalid-parameters", errors=problems)


def domain_problem(exc: Exception) -> ApiProblem:
    """The problem details of a domain error; the only place 503s and their Retry-After are built."""
    if isinstance(exc, AuthError):
        headers = {"WWW-Authenticate": 'Bearer realm="qalign"'} if exc.status == 401 else None
        kind: ProblemKind = "unauthorized" if exc.status == 401 else "forbidden"
        return ApiProblem(exc.status, exc.detail, kind=kind, headers=headers)
    if isinstance(exc, JobStoreDown):
        return _unavailable(f"the job store is unavailable: {exc}", UNAVAILABLE_RETRY_S)
    if isinstance(exc, BlobStoreDown):
        return _unavailable(f"the object store is unavailable: {exc}", UNAVAILABLE_RETRY_S)
    if not isinstance(exc, DomainError):
        raise TypeError(f"not a domain error: {exc!r}")
    if isinstance(exc, NotReady):
        return _unavailable(exc.detail, exc.retry_after or UNAVAILABLE_RETRY_S)
    retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    if isinstance(exc, RateLimited):
        return ApiProblem(429, exc.detail, kind="rate-limited", headers={**exc.headers, **(retry or {})})
    if isinstance(exc, QueueFull):
        return ApiProblem(
            429, exc.detail, kind="too-many-jobs" if exc.per_key else "queue-full", headers=retry
        )
    if isinstance(exc, IdempotencyConflict):
        conflict: ProblemKind = "idempotency-key-in-progress" if exc.in_progress else "idempotency-key-reused"
        return ApiProblem(409, exc.detail, kind=conflict, headers=retry)
    if isinstance(exc, InvalidInput):
        problem = FieldProblem(field=exc.field, message=exc.message, allowed=exc.allowed)
        return ApiProblem(422, exc.detail, kind="invalid-parameters", errors=[problem])
    status, kind = _STATUS[type(exc)]
    return ApiProblem(status, exc.detail, kind=kind, headers=retry)


_STATUS: dict[type, tuple[int, ProblemKind]] = {
    JobNotFound: (404, "job-not-found"),
    ResultNotReady: (409, "result-not-ready"),
    ResultNotFound: (404, "result-not-found"),
    ResultGone: (410, "result-gone"),
}


def _unavailable(detail: str, retry_after: int) -> ApiProblem:
    return ApiProblem(503, detail, kind="not-ready", headers={"Retry-After": str(retry_after)})


DOMAIN_ERRORS = (DomainError, AuthError, JobStoreDown, BlobStoreDown)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiProblem)
    async def _api_problem(request: Request, exc: ApiProblem) -> JSONResponse:
        return problem_response(
            exc.status,
            exc.detail,
            kind=exc.kind,
            instance=request.url.path,
            errors=exc.errors,
            headers=exc.headers,
        )

    async def _domain(request: Request, exc: Exception) -> JSONResponse:
        return await _api_problem(request, domain_problem(exc))

    for error in DOMAIN_ERRORS:
        app.add_exception_handler(error, _domain)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = field_problems(exc, skip_prefix=1)
        return problem_response(
            422, describe(problems), kind="invalid-parameters", instance=request.url.path, errors=problems
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).description
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no endpoint at {request.url.path}"
        allow = (exc.headers or {}).get("Allow")
        if exc.status_code == 405 and allow:
            detail = f"{request.url.path} does not take {request.method}; allowed: {allow}"
        return problem_response(
            exc.status_code,
            detail,
            kind=status_kind(exc.status_code),
            instance=request.url.path,
            headers=exc.headers,
        )

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        """The client left (or the edge cut off its stalled body) mid-request: nobody reads an answer,
        and it is no fault of the service."""
        logger.info(
            "client disconnected before its request was read: %s %s", request.method, request.url.path
        )
        request.scope[CLIENT_GONE] = True
        return problem_response(400, "the client disconnected mid-request", kind="bad-request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            500,
            "internal server error; see the service logs",
            kind="internal-error",
            instance=request.url.path,
        )
