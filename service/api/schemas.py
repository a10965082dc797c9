"""What the API sends and accepts: the public shapes (job object, problem details; defined once in
qalign_schema, shared with webhooks and the Python client), the transfer request and the OpenAPI
request body.
"""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import Field

from qalign_core.params import TransferParams
from qalign_schema.jobs import ErrorOut, JobList, JobMetricsOut, JobOut, JobUrls, ResultOut
from qalign_schema.problems import FieldProblem, Problem

__all__ = [
    "ErrorOut",
    "FieldProblem",
    "JobList",
    "JobMetricsOut",
    "JobOut",
    "JobUrls",
    "Problem",
    "ResultOut",
]


class TransferJSONRequest(TransferParams):
    """JSON body of POST /transfer: the two images as base64 (plain or data: URL) plus parameters."""

    structure: str = Field(
        description="Structure image (PNG, JPEG, WebP): base64, a data: URL or an https:// URL to fetch."
    )
    appearance: str = Field(
        description="Appearance image (PNG, JPEG, WebP): base64, a data: URL or an https:// URL to fetch."
    )
    webhook_url: str | None = Field(
        None, max_length=2000, pattern=r"^https?://", description="Called on running and terminal status."
    )
    webhook_events_filter: list[Literal["start", "completed"]] | None = Field(
        None,
        min_length=1,
        description="Which webhooks to send: start (running), completed (terminal status); default both.",
    )


IMAGE_FIELDS = ("structure", "appearance")
TUPLE_FIELDS = frozenset(
    name for name, info in TransferParams.model_fields.items() if typing.get_origin(info.annotation) is tuple
)


def allowed_values(field: str) -> str | None:
    """Human-readable accepted values of a TransferParams field, from its declared constraints."""
    info = TransferParams.model_fields.get(field)
    if info is None:
        return None
    annotation = info.annotation
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(str(v) for v in typing.get_args(annotation))
    if annotation is bool:
        return "true or false"
    if field in TUPLE_FIELDS:
        return "two integers start,end with 0 <= start <= end <= 1000"
    bounds = {}
    for meta in info.metadata:
        for name in ("ge", "gt", "le", "lt", "multiple_of", "min_length", "max_length"):
            if getattr(meta, name, None) is not None:
                bounds[name] = getattr(meta, name)
    parts = []
    if "ge" in bounds or "gt" in bounds:
        parts.append(f">= {bounds['ge']}" if "ge" in bounds else f"> {bounds['gt']}")
    if "le" in bounds or "lt" in bounds:
        parts.append(f"<= {bounds['le']}" if "le" in bounds else f"< {bounds['lt']}")
    if "multiple_of" in bounds:
        parts.append(f"a multiple of {bounds['multiple_of']}")
    if "min_length" in bounds or "max_length" in bounds:
        parts.append(f"{bounds.get('min_length', 0)} to {bounds.get('max_length')} characters")
    return " and ".join(parts) or None


def multipart_openapi() -> dict:
    """OpenAPI requestBody for POST /transfer: both accepted encodings, fields from TransferParams."""
    params_schema = TransferParams.model_json_schema()
    form_properties: dict[str, dict] = {
        "structure": {
            "type": "string",
            "format": "binary",
            "description": "Structure image, or an https:// URL.",
        },
        "appearance": {
            "type": "string",
            "format": "binary",
            "description": "Appearance image, or an https:// URL.",
        },
        "webhook_url": {"type": "string", "description": "Called on running and terminal status."},
        "webhook_events_filter": {
            "type": "array",
            "items": {"type": "string", "enum": ["start", "completed"]},
            "description": "Repeated field or comma-separated: start, completed (default both).",
        },
    }
    for name, schema in params_schema["properties"].items():
        if name in TUPLE_FIELDS:
            schema = {"type": "string", "description": f"{schema.get('description', '')} As 'start,end'."}
        form_properties[name] = schema
    json_schema = TransferJSONRequest.model_json_schema()
    json_schema.pop("$defs", None)
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": form_properties,
                        "required": list(IMAGE_FIELDS),
                    }
                },
                "application/json": {"schema": json_schema},
            },
        }
    }
