"""RFC 9457 problem details for every error the API returns, FastAPI's own ones included."""

from __future__ import annotations

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.schemas import FieldProblem, Problem, allowed_values

PROBLEM_JSON = "application/problem+json"
logger = logging.getLogger("qalign.api")


class ApiProblem(Exception):
    """Raised anywhere in request handling; becomes a problem-details response."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        kind: str | None = None,
        errors: list[FieldProblem] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.kind, self.errors, self.headers = status, detail, kind, errors, headers


def problem_response(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    instance: str | None = None,
    errors: list[FieldProblem] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body = Problem(
        type=f"/problems/{kind}" if kind else "about:blank",
        title=title,
        status=status,
        detail=detail,
        instance=instance,
        errors=errors,
    )
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=status, media_type=PROBLEM_JSON, headers=headers
    )


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
        return problem_response(exc.status_code, detail, instance=request.url.path, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal server error; see the service logs", instance=request.url.path)
