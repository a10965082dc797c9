"""RFC 9457 problem details: every refusal of the API, and what the client's errors carry."""

from __future__ import annotations

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
