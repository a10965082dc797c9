"""Whether a new job may be accepted now: readiness (cached), queue capacity, per-key limits, and
the Retry-After estimate a refusal carries."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from service.backends.blobs import BlobStore, BlobStoreDown
from service.jobs import Job, JobStoreDown, JobStores
from service.jobs.records import AdmissionLimits, AdmissionRefused
from service.settings import Settings
from service.usecases.errors import InvalidInput, NotReady, QueueFull, RateLimited
from service.usecases.job_queue import Check, Checks, JobQueue

#: Finished jobs whose durations estimate Retry-After.
RECENT_JOBS = 20
#: Retry-After per job ahead when no job has finished yet.
DEFAULT_JOB_S = 30.0


class Verdict(TypedDict):
    """GET /readyz's body."""

    ready: bool
    mode: Literal["embedded", "distributed"]
    checks: Checks
    #: The served model as the live workers report it (None until one has loaded it).
    model: dict[str, Any] | None


class Readiness:
    """{"ready": bool, "mode": ..., "checks": {...}}, reused for QALIGN_READINESS_CACHE_S seconds
    (every POST consults it; the broker and store checks cost round trips)."""

    def __init__(self, settings: Settings, stores: JobStores, blobs: BlobStore, queue: JobQueue) -> None:
        self.settings, self.stores, self.blobs, self.queue = settings, stores, blobs, queue
        self._cached: tuple[float, Verdict] | None = None
        self._lock = threading.Lock()
        self._computing = threading.Lock()

    def verdict(self, *, fresh: bool = False) -> Verdict:
        if not fresh and (cached := self._reusable()) is not None:
            return cached
        with self._computing:  # one check at a time: a burst of requests waits for it, not 16 checks
            if not fresh and (cached := self._reusable()) is not None:
                return cached
            return self._check_now()

    def _reusable(self) -> Verdict | None:
        with self._lock:
            cached = self._cached
        if cached and time.monotonic() - cached[0] < self.settings.readiness_cache_s:
            return cached[1]
        return None

    def _check_now(self) -> Verdict:
        checks: Checks = {"jobs": _check(self.stores.records.ping), "store": _check(self.blobs.ping)}
        checks.update(self.queue.check())
        verdict: Verdict = {
            "ready": all(c["ok"] for c in checks.values()),
            "mode": "embedded" if self.settings.embedded else "distributed",
            "checks": checks,
            "model": self._served_model(),
        }
        with self._lock:
            self._cached = (time.monotonic(), verdict)
        return verdict

    def _served_model(self) -> dict[str, Any] | None:
        """The model the live workers serve: its name, backbone, native size and size limits.

        One worker deployment serves one model; the first live worker that reports one speaks for it.
        """
        try:
            workers = self.stores.workers.live()
        except JobStoreDown:
            return None
        for info in workers.values():
            backbone = info.get("backbone")
            if isinstance(backbone, dict):
                return {"name": info.get("model"), **backbone}
        return None

    def check_size(self, size: int | None) -> None:
        """Refuse an output size the served model cannot run (422 naming its limits), when known."""
        model = self.verdict().get("model")
        if size is None or not model:
            return
        unit, low, high = model["size_unit"], model["min_size"], model["max_size"]
        if size % unit or not low <= size <= high:
            raise InvalidInput(
                "size",
                f"{size} does not fit the served model ({model['title']}, native {model['native_size']} px)",
                f"a multiple of {unit} from {low} to {high}",
            )

    def require(self) -> None:
        """Raise NotReady naming every failing dependency; a model still loading does not refuse jobs
        (they wait in the queue and start once it is loaded)."""
        verdict = self.verdict()
        checks = [(name, c) for name, c in verdict["checks"].items() if not c["ok"] and not c.get("loading")]
        failing = {name: c.get("detail", "down") for name, c in checks}
        if failing:
            raise NotReady("the service is not ready: " + "; ".join(f"{k}: {v}" for k, v in failing.items()))


def _check(ping: Callable[[], object]) -> Check:
    try:
        ping()
        return {"ok": True}
    except (JobStoreDown, BlobStoreDown) as exc:
        return {"ok": False, "detail": str(exc)}


class Capacity:
    """429 when the queue is full, or when an API key has its maximum of unfinished jobs.

    ``admit`` is the rule: the store counts and inserts in one atomic operation, so concurrent
    POSTs cannot overrun a limit together. ``require`` is the same check made early (not atomic),
    so that a full queue is refused before the inputs are stored.
    """

    def __init__(self, settings: Settings, stores: JobStores) -> None:
        self.settings, self.stores = settings, stores

    @property
    def limits(self) -> AdmissionLimits:
        return AdmissionLimits(self.settings.max_queue_depth, self.settings.max_inflight_per_key)

    def require(self, owner: str | None) -> None:
        records = self.stores.records
        queued = records.count_by_status().get("queued", 0)

        def owned() -> int:
            ids = records.ids_by_status("queued") + records.ids_by_status("running")
            return sum(1 for job in records.get_many(ids) if job.owner == owner)

        refused = self.limits.refusal(queued, owned if owner is not None else None)
        if refused is not None:
            self._refuse(refused)

    def admit(self, job: Job) -> None:
        """Insert ``job`` if it fits the limits (one atomic store operation), else QueueFull."""
        refused = self.stores.records.admit(job, self.limits)
        if refused is not None:
            self._refuse(refused)

    def _refuse(self, refused: AdmissionRefused) -> None:
        if refused.per_owner:
            wait = self.retry_after(1)
            raise QueueFull(
                f"this API key has {refused.count} unfinished jobs (limit {refused.limit}); "
                f"retry in about {wait} s",
                retry_after=wait,
                per_key=True,
            )
        wait = self.retry_after(refused.count - refused.limit + 1)
        raise QueueFull(
            f"{refused.count} jobs are waiting (limit {refused.limit}); retry in about {wait} s",
            retry_after=wait,
        )

    def retry_after(self, jobs_ahead: int) -> int:
        """Seconds until ``jobs_ahead`` jobs have finished: the mean total_s of the last finished
        jobs x jobs_ahead / live workers (at least 1 s, at most an hour; 30 s per job with no history)."""
        try:
            records = self.stores.records
            recent = records.get_many(records.recent_ids("succeeded", RECENT_JOBS))
            workers = max(len(self.stores.workers.live()), 1)
        except JobStoreDown:
            return int(DEFAULT_JOB_S)
        durations = [float(total) for j in recent if (total := j.metrics.get("total_s"))]
        mean = sum(durations) / len(durations) if durations else DEFAULT_JOB_S
        return int(min(max(math.ceil(mean * max(jobs_ahead, 1) / workers), 1), 3600))


@dataclass(frozen=True)
class RateState:
    """Where an API key stands in the current rate-limit window."""

    limit: int
    remaining: int
    reset_s: int
    window_s: int

    def headers(self) -> dict[str, str]:
        """The RateLimit header fields (draft-ietf-httpapi-ratelimit-headers, the RFC 9331-era
        names): the quota, what is left of it, seconds until it resets, and the policy."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
            "RateLimit-Policy": f"{self.limit};w={self.window_s}",
        }


class RateLimiter:
    """Per-key request rate limit beside the in-flight cap (``Capacity``): at most
    QALIGN_RATE_LIMIT_REQUESTS submissions per QALIGN_RATE_LIMIT_WINDOW_S fixed window per API key,
    counted in the job store (every API replica shares the count). Refused requests count too,
    so a client hammering through a 429 does not get extra turns."""

    def __init__(self, settings: Settings, stores: JobStores) -> None:
        self.settings, self.stores = settings, stores

    def hit(self, owner: str | None) -> RateState | None:
        """Count one submission of ``owner``: its RateState, or RateLimited past the limit; None when
        no limit applies (none set, or open mode)."""
        limit, window = self.settings.rate_limit_requests, self.settings.rate_limit_window_s
        if not limit or owner is None:
            return None
        count, left = self.stores.rates.hit(owner, window)
        state = RateState(limit, max(0, limit - count), max(1, math.ceil(left)), window)
        if count > limit:
            raise RateLimited(
                f"this API key has made {limit} submissions in the current {window} s window (the "
                f"limit); retry in {state.reset_s} s",
                retry_after=state.reset_s,
                headers=state.headers(),
            )
        return state
