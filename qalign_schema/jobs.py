"""The public job object: what GET /jobs/{id} answers, what webhooks and the events stream send, and
what the Python client parses."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from qalign_schema.params import TransferParams

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
JobStage = Literal["queued", "loading", "inverting", "denoising", "decoding", "uploading", "done"]


class ResultOut(BaseModel):
    url: str = Field(description="Presigned store URL, or /jobs/{id}/result on the local store.")
    content_type: str
    width: int
    height: int
    expires_at: datetime | None = Field(None, description="When url stops working; null = never.")


class ErrorOut(BaseModel):
    type: str = Field(description="Machine-readable kind, e.g. invalid_image, internal_error, interrupted.")
    detail: str


class JobMetricsOut(BaseModel):
    model_config = ConfigDict(extra="allow")

    queue_s: float | None = None
    inversion_s: float | None = None
    denoise_s: float | None = None
    decode_s: float | None = None
    total_s: float | None = None
    inversion_cache_hits: int | None = Field(None, ge=0, le=2)
    adain_applied: Literal["masked", "plain", "none"] | None = Field(
        None, description='The AdaIN that ran: "plain" also when masked AdaIN found no object.'
    )
    object_masks_found: bool | None = Field(
        None, description="Whether masked AdaIN's self-segmentation found the object (null: not asked)."
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
    result: str = Field(description="GET: the result image (409 until the job has succeeded).")
    events: str = Field(description="GET: Server-Sent Events of the job's progress.")


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
    result: ResultOut | None
    error: ErrorOut | None
    metrics: JobMetricsOut
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
        return self.status in ("succeeded", "failed", "canceled")


class JobList(BaseModel):
    """One page of GET /jobs: the caller's jobs, newest first."""

    jobs: list[JobOut]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; null at the end.")
