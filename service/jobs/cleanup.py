"""Expiry: removing job records, results and inputs older than QALIGN_JOB_TTL.

A record expires QALIGN_JOB_TTL after its job ended (an unfinished job does not expire): Redis drops
the key itself, SQLite rows are deleted here, and here both stores drop the index entries of expired
records (``JobRecords.prune``; reads never write). Each pass first runs ``JobRecords.migrate``
(a no-op once done), so records of an earlier version are brought up to date even if that failed
at start. Objects are swept:
a result goes when its job record is gone (or finished longer than the TTL ago); an input goes when
no stored job references it and it was not written or reused for an hour (inputs are shared between
jobs by content digest, and reuse refreshes them, see blobs.INPUT_REFRESH_S); cached inversions
go after the TTL. Run it as ``python -m service.jobs.cleanup`` (cron, Kubernetes CronJob), or let each
API process run it every QALIGN_CLEANUP_INTERVAL seconds (a Redis lease makes one replica do it).
On S3, a bucket lifecycle rule is the production way to expire objects (docs/reliability.md).
"""

from __future__ import annotations

import json
import logging
import time

from service.backends.blobs import KEY_PATTERN, BlobStore, BlobStoreDown, result_job_id
from service.jobs import JobStoreDown, JobStores
from service.jobs.periodic import Periodic
from service.settings import Settings

logger = logging.getLogger("qalign.cleanup")

#: Unreferenced inputs younger than this are kept: their job record may be being written right now.
INPUT_GRACE_S = 3600.0
#: Results without a record younger than this are kept (same reason, for a record being replaced).
RESULT_GRACE_S = 600.0
#: Leftover temp files of interrupted local writes older than this are removed.
TEMP_GRACE_S = 3600.0


def sweep(
    stores: JobStores, blobs: BlobStore, settings: Settings, now: float | None = None
) -> dict[str, int]:
    """One expiry pass; returns how many records and objects of each kind were removed."""
    now = time.time() if now is None else now
    stores.records.migrate()
    counts = {"records": stores.records.prune(), "results": 0, "inputs": 0, "inversions": 0, "temp_files": 0}
    live = {job.id: job for job in stores.records.all_jobs()}
    referenced = {key for job in live.values() for key in job.input_keys}
    expired_before = now - settings.job_ttl

    def remove(key: str, kind: str) -> None:
        if KEY_PATTERN.match(key):
            blobs.delete(key)
            counts[kind] += 1
        elif hasattr(blobs, "delete_raw"):  # a local temp file a crashed write left behind
            blobs.delete_raw(key)
            counts["temp_files"] += 1

    for folder in ("results", "inputs", "inversions"):
        for key, modified in list(blobs.list_objects(folder)):
            age = now - modified
            if not KEY_PATTERN.match(key):
                if key.split("/")[-1].startswith(".tmp-") and age > TEMP_GRACE_S:
                    remove(key, folder)
                continue
            if folder == "results":
                job = live.get(result_job_id(key))
                if job is None:
                    if age > RESULT_GRACE_S:
                        remove(key, folder)
                elif job.finished_at is not None and job.finished_at.timestamp() < expired_before:
                    remove(key, folder)
                elif job.finished and key not in {r.key for r in job.results} and age > RESULT_GRACE_S:
                    remove(key, folder)  # a superseded attempt's late upload (see storage.result_key)
            elif folder == "inputs":
                if key not in referenced and age > INPUT_GRACE_S:
                    remove(key, folder)
            elif age > settings.job_ttl:
                remove(key, folder)
    return counts


class Sweeper:
    """Runs ``sweep`` every QALIGN_CLEANUP_INTERVAL seconds in a daemon thread of the API process."""

    def __init__(self, stores: JobStores, blobs: BlobStore, settings: Settings) -> None:
        self.stores, self.blobs, self.settings = stores, blobs, settings
        interval = settings.cleanup_interval
        # First pass shortly after start (not at once: startup stays fast), then every interval.
        self._sweeps = Periodic(
            "qalign-cleanup",
            interval,
            self.run_once,
            first=min(60.0, interval),
            logger=logger,
            failure="expiry sweep failed",
        )

    def start(self) -> None:
        if self.settings.cleanup_interval > 0:
            self._sweeps.start()

    def stop(self) -> None:
        self._sweeps.stop()

    def run_once(self) -> dict[str, int] | None:
        """One sweep unless another API replica holds this interval's lease; None when skipped/failed."""
        interval = self.settings.cleanup_interval or 60.0
        try:
            if not self.stores.workers.try_lock("cleanup", max(interval * 0.9, 1.0)):
                return None
            counts = sweep(self.stores, self.blobs, self.settings)
        except (JobStoreDown, BlobStoreDown) as exc:
            logger.warning("expiry sweep skipped: %s", exc)
            return None
        except Exception:  # the sweep must never take the API down
            logger.exception("expiry sweep failed")
            return None
        if any(counts.values()):
            logger.info("expiry sweep", extra={"removed": counts})
        return counts


def main() -> None:
    """``python -m service.jobs.cleanup``: one sweep with the deployment's settings; prints the counts."""
    from service.backends import open_job_stores
    from service.backends.blobs import open_blob_store
    from service.logs import configure_logging

    settings = Settings()
    configure_logging(settings.log_level)
    stores, blobs = open_job_stores(settings), open_blob_store(settings)
    try:
        print(json.dumps(sweep(stores, blobs, settings)))
    finally:
        stores.close()


if __name__ == "__main__":
    main()
