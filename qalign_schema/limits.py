"""``GET /limits``: what a submission must fit and which values each choice takes, read from the one
home of every rule (this package and the deployment's settings), so that the page at ``/`` and
integrators ask the service instead of copying numbers that may change."""

from __future__ import annotations

from typing import Any, get_args

from pydantic import BaseModel, Field

from qalign_schema.jobs import ERROR_TYPES, TERMINAL_STATUSES, ErrorType, JobStatus
from qalign_schema.params import (
    ADAIN_MODES,
    IMAGE_FORMATS,
    IMAGE_FORMATS_TEXT,
    IMAGE_MEDIA_TYPES,
    MAX_APPEARANCES,
    MAX_ASPECT_RATIO,
    MAX_SIZE,
    MIN_SIZE,
    SIZE_UNIT,
    AdainMode,
    ImageFormat,
    TransferParams,
)
from qalign_schema.problems import PROBLEM_KINDS, ProblemKind
from qalign_schema.submission import (
    EVENT_KINDS,
    IDEMPOTENCY_KEY_MAX_LENGTH,
    MAX_PREFER_WAIT_S,
    MAX_URL_LENGTH,
    EventKind,
)


class IntRange(BaseModel):
    """Inclusive bounds of an integer parameter."""

    min: int
    max: int


class Limits(BaseModel):
    """GET /limits. Sizes here are the bounds over every backbone; ``GET /readyz``'s ``model`` narrows
    them to the served model's."""

    max_appearances: int = Field(description="Appearance images one job may carry (at least 1).")
    max_aspect_ratio: float = Field(
        description="The most elongated output kept (longer : shorter side); beyond, the structure image "
        "is centre-cropped to it."
    )
    image_formats: list[ImageFormat] = Field(description="Accepted input formats, also the output formats.")
    image_media_types: list[str] = Field(description="The same formats as media types, in the same order.")
    image_formats_text: str = Field(description="The formats in words, as refusals name them.")
    max_upload_bytes: int = Field(description="Largest image file (QALIGN_MAX_UPLOAD_BYTES).")
    max_pixels: int = Field(description="Largest image pixel count (QALIGN_MAX_PIXELS).")
    max_request_bytes: int = Field(description="Largest multipart POST /transfer body.")
    max_json_bytes: int = Field(description="Largest JSON POST /transfer body.")
    max_url_length: int = Field(description="Longest webhook_url or image URL, in characters.")
    idempotency_key_max_length: int = Field(description="Longest Idempotency-Key, in characters.")
    max_prefer_wait_s: int = Field(description="Longest Prefer: wait=N honoured, in seconds.")
    size: IntRange = Field(description="`size` bounds over every backbone (see GET /readyz for the model's).")
    size_unit: int = Field(description="`size` is a multiple of this (the served model may need more).")
    steps: IntRange = Field(description="`steps` bounds.")
    seed: IntRange = Field(description="`seed` bounds.")
    methods: list[str] = Field(description="`method` values, the default first.")
    aspects: list[str] = Field(description="`aspect` values, the default first.")
    adain_modes: list[AdainMode] = Field(description="`adain` values, the default first.")
    event_kinds: list[EventKind] = Field(description="`webhook_events_filter` values.")
    terminal_statuses: list[JobStatus] = Field(description="The statuses a job never leaves.")
    error_types: list[ErrorType] = Field(description="Every `error.type` a failed job can carry.")
    problem_types: list[ProblemKind] = Field(
        description="Every refusal's problem type, `/problems/<kind>`: its kinds."
    )


def _bounds(field: str) -> IntRange:
    """The ``ge``/``le`` bounds TransferParams declares for ``field``."""
    found: dict[str, Any] = {}
    for meta in TransferParams.model_fields[field].metadata:
        for name in ("ge", "le"):
            if getattr(meta, name, None) is not None:
                found[name] = getattr(meta, name)
    return IntRange(min=found["ge"], max=found["le"])


def _default(field: str) -> object:
    return TransferParams.model_fields[field].default


def _choices(field: str) -> list[str]:
    """A Literal field's values, its default first."""
    values = [str(v) for v in get_args(TransferParams.model_fields[field].annotation)]
    return sorted(values, key=lambda value: value != _default(field))


def limits(*, max_upload_bytes: int, max_pixels: int, max_request_bytes: int, max_json_bytes: int) -> Limits:
    """The limits object, given the deployment's settings (the rest is fixed by this package)."""
    return Limits(
        max_appearances=MAX_APPEARANCES,
        max_aspect_ratio=MAX_ASPECT_RATIO,
        image_formats=list(IMAGE_FORMATS),
        image_media_types=list(IMAGE_MEDIA_TYPES),
        image_formats_text=IMAGE_FORMATS_TEXT,
        max_upload_bytes=max_upload_bytes,
        max_pixels=max_pixels,
        max_request_bytes=max_request_bytes,
        max_json_bytes=max_json_bytes,
        max_url_length=MAX_URL_LENGTH,
        idempotency_key_max_length=IDEMPOTENCY_KEY_MAX_LENGTH,
        max_prefer_wait_s=MAX_PREFER_WAIT_S,
        size=IntRange(min=MIN_SIZE, max=MAX_SIZE),
        size_unit=SIZE_UNIT,
        steps=_bounds("steps"),
        seed=_bounds("seed"),
        methods=_choices("method"),
        aspects=_choices("aspect"),
        adain_modes=sorted(ADAIN_MODES, key=lambda mode: mode != _default("adain")),
        event_kinds=list(EVENT_KINDS),
        terminal_statuses=[status for status in get_args(JobStatus) if status in TERMINAL_STATUSES],
        error_types=list(ERROR_TYPES),
        problem_types=list(PROBLEM_KINDS),
    )
