"""What the API sends and accepts: the public shapes (job object, problem details; defined once in
qalign_schema, shared with webhooks and the Python client), the transfer request and the OpenAPI
request body.
"""

from __future__ import annotations

import typing
from typing import Any, Literal

from pydantic import Field, TypeAdapter

from qalign_core.params import MAX_APPEARANCES, TransferParams
from qalign_schema.jobs import ErrorOut, JobList, JobMetricsOut, JobOut, JobParams, JobUrls, ResultOut
from qalign_schema.params import IMAGE_FORMAT_NAMES, IMAGE_MEDIA_TYPES
from qalign_schema.problems import FieldProblem, Problem
from qalign_schema.submission import (
    EVENT_KINDS,
    IDEMPOTENCY_KEY_RULE,
    EventKind,
    IdempotencyKey,
    WebhookUrl,
)

__all__ = [
    "ErrorOut",
    "FieldProblem",
    "JobList",
    "JobMetricsOut",
    "JobOut",
    "JobParams",
    "JobUrls",
    "Problem",
    "ResultOut",
]

#: The accepted image formats as descriptions name them: PNG, JPEG, WebP.
_FORMATS = ", ".join(IMAGE_FORMAT_NAMES)


def _appearance_list_bounds(schema: dict[str, Any]) -> None:
    """Publish the list form's bounds (checked in service.http.intake, with a problem naming them)."""
    for option in schema.get("anyOf", []):
        if option.get("type") == "array":
            option["minItems"], option["maxItems"] = 1, MAX_APPEARANCES


class TransferJSONRequest(TransferParams):
    """JSON body of POST /transfer: the structure and 1..MAX_APPEARANCES appearance images as base64
    (plain or data: URL) or https:// URLs, plus parameters."""

    structure: str = Field(
        description=f"Structure image ({_FORMATS}): base64, a data: URL or an https:// URL to fetch."
    )
    appearance: str | list[str] = Field(
        description=f"Appearance image ({_FORMATS}): base64, a data: URL or an https:// URL to fetch; "
        f"or a list of 1 to {MAX_APPEARANCES} such images: one result each, in this order.",
        json_schema_extra=lambda schema: _appearance_list_bounds(schema),
    )
    webhook_url: WebhookUrl | None = Field(None, description="Called on running and terminal status.")
    webhook_events_filter: list[EventKind] | None = Field(
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
        return "two integers start,end with 0 <= start <= end <= 100"
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


#: A 1x1 PNG: the smallest image the request examples can carry (base64).
EXAMPLE_PNG_BASE64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)
#: One end of a step range in a form field: an integer 0 to 100.
_STEP = r"(?:100|[1-9]?[0-9])"
#: Header parameters of POST /transfer checked by service.http.intake, not by FastAPI (Prefer is a
#: FastAPI header parameter of the route).
TRANSFER_HEADERS = [
    {
        "name": "Idempotency-Key",
        "in": "header",
        "required": False,
        "description": "Retry-safe submission: the same key with the same request returns the first job "
        f"(200); with another request, 409. {IDEMPOTENCY_KEY_RULE}.",
        "schema": TypeAdapter(IdempotencyKey).json_schema(),
        "example": "6d1f2a3b-9c4e-4f5a-8b7c-1d2e3f4a5b6c",
    },
]


def multipart_openapi() -> dict[str, Any]:
    """OpenAPI requestBody (both accepted encodings, fields from TransferParams, an example of each)
    and the header parameters of POST /transfer."""
    params_schema = TransferParams.model_json_schema()
    image_types = ", ".join(IMAGE_MEDIA_TYPES)
    form_properties: dict[str, dict[str, Any]] = {
        "structure": {
            "type": "string",
            "format": "binary",
            "description": "Structure image, or an https:// URL.",
        },
        "appearance": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "minItems": 1,
            "maxItems": MAX_APPEARANCES,
            "description": "Appearance image, or an https:// URL; repeat the part for up to "
            f"{MAX_APPEARANCES} images (one result each, in the parts' order).",
        },
        "webhook_url": {
            **TypeAdapter(WebhookUrl).json_schema(),
            "description": "Called on running and terminal status.",
        },
        "webhook_events_filter": {
            "type": "array",
            "items": {"type": "string", "enum": list(EVENT_KINDS)},
            "description": f"Repeated field or comma-separated: {', '.join(EVENT_KINDS)} (default all).",
        },
    }
    for name, schema in params_schema["properties"].items():
        if name in TUPLE_FIELDS:
            schema = {
                "type": "string",
                "pattern": rf"^\s*{_STEP}\s*,\s*{_STEP}\s*$",
                "description": f"{schema.get('description', '')} As 'start,end', 0 <= start <= end <= 100.",
            }
        form_properties[name] = schema
    json_schema = TransferJSONRequest.model_json_schema()
    json_schema.pop("$defs", None)
    return {
        "parameters": TRANSFER_HEADERS,
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": form_properties,
                        "required": list(IMAGE_FIELDS),
                        "additionalProperties": False,
                    },
                    "encoding": {field: {"contentType": image_types} for field in IMAGE_FIELDS},
                    "example": {
                        "structure": "(the structure image file)",
                        "appearance": "(the appearance image file)",
                        "steps": 50,
                        "seed": 1,
                        "method": "qalign",
                        "align_steps_fine": "10,90",
                    },
                },
                "application/json": {
                    "schema": json_schema,
                    "example": {
                        "structure": EXAMPLE_PNG_BASE64,
                        "appearance": "data:image/png;base64," + EXAMPLE_PNG_BASE64,
                        "steps": 50,
                        "seed": 1,
                        "method": "qalign",
                        "align_steps_fine": [10, 90],
                    },
                },
            },
        },
    }
