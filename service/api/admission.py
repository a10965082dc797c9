"""Whether a new job may be accepted now: readiness (cached), queue capacity, per-key limits, and
the Retry-After estimate a refusal carries."""

from __future__ import annotations

import math
import threading
import time

from service.api.dispatch import Dispatcher
from service.api.errors import NotReady, QueueFull
from service.jobs import JobStores, StoreUnavailable
from service.settings import Settings
from service.storage import ObjectStore, StorageUnavailable

#: Finished jobs whose durations estimate Retry-After.
RECENT_JOBS = 20
#: Retry-After per job ahead when no job has finished yet.
DEFAULT_JOB_S = 30.0


class Readiness:
    """{"ready": bool, "mode": ..., "checks": {...}}, reused for QALIGN_READINESS_CACHE_S seconds
    (every POST consults it; the broker and store checks cost round trips)."""

    def __init__(
        self, settings: Settings, stores: JobStores, store: ObjectStore, dispatcher: Dispatcher
    ) -> None:
        self.settings, self.stores, self.store, self.dispatcher = settings, stores, store, dispatcher
        self._cached: tuple[float, dict] | None = None
        self._lock = threading.Lock()
        self._computing = threading.Lock()

    def verdict(self, *, fresh: bool = False) -> dict:
        if not fresh and (cached := self._reusable()) is not None:
            return cached
        with self._computing:  # one check at a time: a burst of requests waits for it, not 16 checks
            if not fresh and (cached := self._reusable()) is not None:
                return cached
            return self._check_now()

    def _reusable(self) -> dict | None:
        with self._lock:
            cached = self._cached
        if cached and time.monotonic() - cached[0] < self.settings.readiness_cache_s:
            return cached[1]
        return None

    def _check_now(self) -> dict:
        checks: dict[str, dict] = {"jobs": _check(self.stores.records.ping), "store": _check(self.store.ping)}
        checks.update(self.dispatcher.check())
        verdict = {
            "ready": all(c["ok"] for c in checks.values()),
            "mode": "embedded" if self.settings.embedded else "distributed",
            "checks": checks,
        }
        with self._lock:
            self._cached = (time.monotonic(), verdict)
        return verdict

    def require(self) -> None:
        """Raise NotReady naming every failing dependency; a model still loading does not refuse jobs
        (they wait in the queue and start once it is loaded)."""
        verdict = self.verdict()
        checks = [(name, c) for name, c in verdict["checks"].items() if not c["ok"] and not c.get("loading")]
        failing = {name: c.get("detail", "down") for name, c in checks}
        if failing:
            raise NotReady("the service is not ready: " + "; ".join(f"{k}: {v}" for k, v in failing.items()))


def _check(ping) -> dict:
    try:
        ping()
        return {"ok": True}
    except (StoreUnavailable, StorageUnavailable) as exc:
        return {"ok": False, "detail": str(exc)}


class Capacity:
    """429 when the queue is full, or when an API key has its maximum of unfinished jobs."""

    def __init__(self, settings: Settings, stores: JobStores) -> None:
        self.settings, self.stores = settings, stores

    def require(self, owner: str | None) -> None:
        queued = self.stores.records.count_by_status().get("queued", 0)
        limit = self.settings.max_queue_depth
        if queued >= limit:
            wait = self.retry_after(queued - limit + 1)
            raise QueueFull(
                f"{queued} jobs are waiting (limit {limit}); retry in about {wait} s", retry_after=wait
            )
        per_key = self.settings.max_inflight_per_key
        if per_key is not None and owner is not None:
            records = self.stores.records
            ids = records.ids_by_status("queued") + records.ids_by_status("running")
            mine = sum(1 for job in records.get_many(ids) if job.owner == owner)
            if mine >= per_key:
                wait = self.retry_after(1)
                raise QueueFull(
                    f"this API key has {mine} unfinished jobs (limit {per_key}); retry in about {wait} s",
                    retry_after=wait,
                    per_key=True,
                )

    def retry_after(self, jobs_ahead: int) -> int:
        """Seconds until ``jobs_ahead`` jobs have finished: the mean total_s of the last finished
        jobs x jobs_ahead / live workers (at least 1 s, at most an hour; 30 s per job with no history)."""
        try:
            records = self.stores.records
            recent = records.get_many(records.recent_ids("succeeded", RECENT_JOBS))
            workers = max(len(self.stores.workers.live()), 1)
        except StoreUnavailable:
            return int(DEFAULT_JOB_S)
        durations = [float(j.metrics["total_s"]) for j in recent if j.metrics.get("total_s")]
        mean = sum(durations) / len(durations) if durations else DEFAULT_JOB_S
        return int(min(max(math.ceil(mean * max(jobs_ahead, 1) / workers), 1), 3600))
