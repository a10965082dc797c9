"""Billable usage: what one job cost (on its job object) and what an API key's jobs cost over a
period (GET /usage), both read from the job records, so both backends give the same answer."""

from __future__ import annotations

from datetime import datetime

from qalign_schema.jobs import JobUsageOut, UsageOut
from service.jobs.model import Job
from service.jobs.records import JobRecords

#: Records read per store call while summing a period (newest first, as GET /jobs pages them).
USAGE_PAGE = 200
#: The metrics that count UNet rows, by phase (``unet_rows_inversion``, ``unet_rows_denoising``).
UNET_ROWS_PREFIX = "unet_rows_"


def job_usage(job: Job) -> JobUsageOut | None:
    """A finished job's compute seconds, UNet rows and output pixels; None while it has not ended."""
    if not job.finished:
        return None
    compute_s = 0.0
    if job.started_at is not None and job.finished_at is not None:
        compute_s = max(0.0, (job.finished_at - job.started_at).total_seconds())
    rows = sum(
        int(value)
        for name, value in job.metrics.items()
        if name.startswith(UNET_ROWS_PREFIX)
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
    )
    pixels = sum(result.width * result.height for result in job.results) if job.status == "succeeded" else 0
    return JobUsageOut(compute_s=round(compute_s, 3), unet_rows=rows, output_pixels=pixels)


def usage_report(records: JobRecords, owner: str | None, since: datetime | None, until: datetime) -> UsageOut:
    """The sum over ``owner``'s jobs created in [since, until): pages through the owner's records
    newest first and stops at the first one created before ``since``."""
    jobs = succeeded = unfinished = rows = pixels = 0
    compute_s = 0.0
    before: tuple[float, str] | None = (until.timestamp(), "")  # ids sort after "": created < until
    while True:
        page = records.owned(owner, status=None, limit=USAGE_PAGE, before=before)
        for job in page:
            if since is not None and job.created_at < since:
                page = []
                break
            jobs += 1
            succeeded += job.status == "succeeded"
            usage = job_usage(job)
            if usage is None:
                unfinished += 1
                continue
            compute_s += usage.compute_s
            rows += usage.unet_rows
            pixels += usage.output_pixels
        if len(page) < USAGE_PAGE:
            break
        before = (page[-1].created_at.timestamp(), page[-1].id)
    return UsageOut(
        since=since,
        until=until,
        jobs=jobs,
        succeeded=succeeded,
        unfinished=unfinished,
        compute_s=round(compute_s, 3),
        unet_rows=rows,
        output_megapixels=round(pixels / 1e6, 6),
    )
