"""Where jobs and their data live: job records on Redis or SQLite, blobs (inputs, results) on S3 or
local files, and the Celery queue on Redis. Each backend implements a protocol the job runtime
declares (``service.jobs.records``, ``service.backends.blobs.BlobStore``); nothing here decides a
job's life."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.jobs.records import JobStores
    from service.settings import Settings


def open_job_stores(settings: Settings) -> JobStores:
    """Redis when QALIGN_REDIS_URL is set, else the embedded SQLite file in DATA_DIR."""
    if settings.redis_url:
        from service.backends.redis_records import open_redis_stores

        return open_redis_stores(settings.redis_url, ttl=settings.job_ttl)
    from service.backends.sqlite_records import open_sqlite_stores

    return open_sqlite_stores(Path(settings.data_dir) / "jobs.sqlite3", ttl=settings.job_ttl)
