"""The public job object: what GET /jobs/{id} answers, what webhooks and the events stream send, and
what the Python client parses."""

from __future__ import annotations

from datetime import datetime
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from qalign_schema.params import MAX_APPEARANCES, AdainMode, TransferParams

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
JobStage = Literal["queued", "loading", "inverting", "denoising", "decoding", "uploading", "done"]
#: The statuses a job never leaves: the one home of this rule (server, webhooks, client).
TERMINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})

#: Every ``error.type`` a failed job can carry: a closed set (an enum in the OpenAPI document).
ErrorType = Literal[
    "invalid_image",
    "invalid_parameters",
    "invalid_request",
    "model_load_error",
    "input_missing",
    "storage_unavailable",
    "time_limit",
    "worker_lost",
    "interrupted",
    "not_enqueued",
    "internal_error",
]
#: What each error type means and what to do about it (docs/service.md's table is checked against it).
ERROR_TYPES: dict[ErrorType, str] = {
    "invalid_image": "an input image could not be decoded or used by the model; send another image",
    "invalid_parameters": "the job's parameters did not validate when it ran; resubmit with valid ones",
    "invalid_request": "the model refused the request (e.g. a size the served model does not take); the "
    "detail says why",
    "model_load_error": "the worker could not load the model; an operator must fix the model setting",
    "input_missing": "an input image was no longer in the object store; resubmit the job",
    "storage_unavailable": "the object or job store stayed unreachable for STORAGE_OUTAGE_DEADLINE; "
    "resubmit the job",
    "time_limit": "the run took longer than JOB_TIME_LIMIT and was stopped",
    "worker_lost": "the worker running the job stopped without finishing it (crash, kill, lost host) "
    "in each of its MAX_ATTEMPTS attempts",
    "interrupted": "the job was interrupted (e.g. by worker shutdowns) MAX_ATTEMPTS times",
    "not_enqueued": "the job was stored but could not be queued; resubmit it",
    "internal_error": "the worker failed unexpectedly; the worker logs have the details",
}
#: Why a webhook event was given up on (``qalign_webhooks_undelivered_total{reason}``, the job
#: record's ``webhook_undelivered``): its URL refused at delivery time, or every attempt failed.
UndeliveredReason = Literal["refused", "failed"]
UNDELIVERED_REASONS: tuple[UndeliveredReason, ...] = get_args(UndeliveredReason)


class ResultOut(BaseModel):
    """One result image: the one made from appearance ``index`` (``GET /jobs/{id}/results/{index}``)."""

    index: int = Field(
        0, ge=0, lt=MAX_APPEARANCES, description="k: the appearance image (from 0, in submission order)."
    )
    url: str = Field(
        description="Absolute: a presigned store URL, or /jobs/{id}/results/{k} (k = 0: /jobs/{id}/result) "
        "on the local store."
    )
    content_type: str
    width: int
    height: int
    expires_at: datetime | None = Field(None, description="When url stops working; null = never.")
    adain_applied: AdainMode | None = Field(
        None, description="The AdaIN that ran for this image (null on records of older versions)."
    )
    object_masks_found: bool | None = Field(
        None, description="Whether masked AdaIN found the object in this pair (null: not asked)."
    )


class CropOut(BaseModel):
    """A region of the structure image, in its pixels (right and bottom exclusive)."""

    left: int = Field(ge=0)
    top: int = Field(ge=0)
    right: int = Field(ge=1)
    bottom: int = Field(ge=1)


class OutputOut(BaseModel):
    """The shape every result image of a job has and how it was computed, known once the job has run."""

    width: int = Field(ge=1, description="Width in pixels of every result image.")
    height: int = Field(ge=1, description="Height in pixels of every result image.")
    aspect_clamped: bool = Field(
        False,
        description="True when the structure image was more elongated than 2:1 (or 1:2) and was "
        "centre-cropped to that ratio first.",
    )
    grid_width: int | None = Field(
        None,
        ge=1,
        description="Width of the grid the model ran at (a multiple of its size unit); the results are "
        "resized from it to width x height, the structure's exact aspect. Null on older jobs.",
    )
    grid_height: int | None = Field(None, ge=1, description="Height of the grid the model ran at.")
    crop: CropOut | None = Field(
        None,
        description="The region of the structure image the results show, in its pixels: its centre "
        "2:1 with aspect_clamped, its centre square with aspect=square; null when they show all of it.",
    )


class ErrorOut(BaseModel):
    type: ErrorType = Field(
        description="Machine-readable kind: "
        + "; ".join(f"{kind}: {meaning}" for kind, meaning in ERROR_TYPES.items())
        + "."
    )
    detail: str


class JobMetricsOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    queue_s: float | None = None
    inversion_s: float | None = None
    denoise_s: float | None = None
    decode_s: float | None = None
    total_s: float | None = None
    inversion_cache_hits: int | None = Field(
        None,
        ge=0,
        le=MAX_APPEARANCES + 1,
        description="Inversions read from the cache: 0 .. appearances + 1.",
    )
    adain_applied: AdainMode | None = Field(
        None,
        description='The AdaIN that ran for the first image: "plain" also when masked AdaIN found no '
        "object (each result states its own).",
    )
    object_masks_found: bool | None = Field(
        None,
        description="Whether masked AdaIN's self-segmentation found the object in the first pair "
        "(null: not asked; each result states its own).",
    )
    rows_per_step: int | None = Field(
        None, ge=1, description="UNet rows of the largest denoising step (3N+1 for N appearances)."
    )
    output_width: int | None = Field(None, ge=1, description="Width of the result images.")
    output_height: int | None = Field(None, ge=1, description="Height of the result images.")
    aspect_clamped: bool | None = Field(
        None, description="Whether the structure image was cropped to the 2:1 bound first."
    )


class JobParams(TransferParams):
    """The effective parameters of a job: what the caller sent, defaults filled in. ``size`` is null
    until a worker has resolved it to the model's native size. Unknown fields are ignored (not refused
    as on submission), so a client keeps parsing job objects of a newer server."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class JobUrls(BaseModel):
    """Absolute links of one job."""

    get: str = Field(description="GET: the job object.")
    cancel: str = Field(description="DELETE: cancel the job.")
    result: str = Field(description="GET: the first result image (409 until the job has succeeded).")
    events: str = Field(description="GET: Server-Sent Events of the job's progress.")
    results: list[str] = Field(
        default_factory=list,
        description="GET: result image k, one link per appearance in order (/jobs/{id}/results/{k}).",
    )


class JobUsageOut(BaseModel):
    """What one job cost, in billable units; known once it has ended."""

    compute_s: float = Field(
        ge=0.0,
        description="Worker seconds: from the start of its run (the last, if it was retried) to its "
        "end; 0 when it never ran (canceled while queued).",
    )
    unet_rows: int = Field(
        ge=0,
        description="UNet rows it evaluated (inversion and denoising): the model work, independent of "
        "the GPU's speed (3N+1 per aligned step for N appearances).",
    )
    output_pixels: int = Field(ge=0, description="Pixels of all its result images; 0 unless it succeeded.")


class UsageOut(BaseModel):
    """GET /usage: what an API key's jobs created in [since, until) cost, summed from the job store
    (a job is kept QALIGN_JOB_TTL seconds after it ended: older ones are no longer counted)."""

    since: datetime | None = Field(description="Start of the period (inclusive); null: every kept job.")
    until: datetime = Field(description="End of the period (exclusive).")
    jobs: int = Field(ge=0, description="Jobs created in the period, whatever their status.")
    succeeded: int = Field(ge=0, description="Of those, the succeeded ones.")
    unfinished: int = Field(ge=0, description="Of those, the ones still queued or running (no usage yet).")
    compute_s: float = Field(ge=0.0, description="Sum of the ended jobs' usage.compute_s.")
    unet_rows: int = Field(ge=0, description="Sum of the ended jobs' usage.unet_rows.")
    output_megapixels: float = Field(ge=0.0, description="Sum of the ended jobs' usage.output_pixels / 10^6.")


class JobOut(BaseModel):
    id: str
    status: JobStatus
    stage: JobStage
    progress: float = Field(ge=0.0, le=1.0)
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: JobParams = Field(
        description="The effective parameters (size is filled in once the job has run)."
    )
    appearances: int = Field(
        1,
        ge=1,
        le=MAX_APPEARANCES,
        description="How many appearance images the job carries (one result each).",
    )
    output: OutputOut | None = Field(
        None, description="The result images' width and height; null until the job has run."
    )
    result: ResultOut | None = Field(description="The first result (= results[0]); null until succeeded.")
    results: list[ResultOut] = Field(
        default_factory=list,
        description="One result per appearance image, in submission order; empty until succeeded.",
    )
    error: ErrorOut | None
    metrics: JobMetricsOut
    usage: JobUsageOut | None = Field(
        None, description="What the job cost, to bill with; null until it has ended."
    )
    urls: JobUrls | None = Field(None, description="Absolute links of this job.")
    queue_position: int | None = Field(
        None, ge=0, description="While queued or running: jobs ahead of this one (0 = running or next)."
    )
    eta_s: float | None = Field(
        None, ge=0, description="While queued or running: estimated seconds to finish; null when unknown."
    )
    waiting_for: Literal["worker"] | None = Field(
        None,
        description='While queued: "worker" when no worker is running, so the job waits for one to start '
        "(a deployment that scales workers to zero starts one for it); null otherwise.",
    )

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class JobList(BaseModel):
    """One page of GET /jobs: the caller's jobs, newest first."""

    jobs: list[JobOut]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; null at the end.")
