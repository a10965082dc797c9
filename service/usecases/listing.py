"""GET /jobs: the caller's jobs, newest first, a page at a time.

The cursor is opaque to callers: the (created_at, id) of the last job of the previous page, so a
page is stable while new jobs arrive (they sort before it) and old ones expire.
"""

from __future__ import annotations

import base64
import binascii

from service.jobs import Job, JobStores
from service.usecases.errors import InvalidInput

DEFAULT_LIMIT, MAX_LIMIT = 20, 100


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.timestamp()!r}:{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split(":", 1)
        return float(stamp), job_id
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput(
            "cursor", "not a cursor this service issued", "the next_cursor of the previous page"
        ) from exc


class JobListing:
    def __init__(self, stores: JobStores) -> None:
        self.stores = stores

    def page(
        self, owner: str | None, *, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Job], str | None]:
        """(jobs, next_cursor); next_cursor is None on the last page."""
        before = decode_cursor(cursor) if cursor else None
        jobs = self.stores.records.owned(owner, status=status, limit=limit + 1, before=before)
        if len(jobs) <= limit:
            return jobs, None
        return jobs[:limit], encode_cursor(jobs[limit - 1])
