"""RFC 9457 problem details: every refusal of the API, and what the client's errors carry."""

from __future__ import annotations

from http import HTTPStatus

from pydantic import BaseModel, Field


class FieldProblem(BaseModel):
    field: str
    message: str
    allowed: str | None = Field(None, description="The accepted values or range of the field.")


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = "about:blank"
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
        kind: str | None = None,
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


def problem_type(kind: str | None) -> str:
    """The ``type`` URI of a problem kind: ``/problems/<kind>``, or ``about:blank`` without one."""
    return f"/problems/{kind}" if kind else "about:blank"
