"""Host loss: live workers find ``running`` jobs whose holder stopped heartbeating and republish them.

A worker that dies with its whole host (SIGKILL of parent and pool child, a lost VM) leaves its job
``running`` and its broker message unacknowledged; the broker gives the message back only after the
visibility timeout (job_hard_time_limit + 300 s by default). Every live worker therefore scans the
running jobs every TAKEOVER_CHECK_INTERVAL seconds: a job whose holder has no fresh heartbeat is
published again (once per lost attempt, under a short lease), and the atomic claim of whichever
worker receives it takes it over (``transitions.claim``). The visibility timeout stays as the last
resort. Takeover therefore happens within HEARTBEAT_TTL + TAKEOVER_CHECK_INTERVAL plus one delivery.

No false alarms after a job-store outage: heartbeats stop while the store is unreachable, so the
scan acts only once this process has reached the store continuously for HEARTBEAT_TTL and the store
itself has been up that long (a restarted Redis forgets keys whose TTL ran out meanwhile); by then
every live holder has written a fresh heartbeat again.

This module needs neither Celery nor HTTP: the worker injects ``publish``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from service.jobs.store import JobRecords, StoreUnavailable, WorkerRegistry

logger = logging.getLogger("qalign.worker")


def orphaned(records: JobRecords, workers: WorkerRegistry) -> list[tuple[str, int, str | None]]:
    """(job id, attempt, holder) of every running job whose holder has no fresh heartbeat.

    The records are read before the heartbeats: a job claimed meanwhile has a holder whose heartbeat
    named it before the claim, so it is never reported by mistake.
    """
    jobs = [job for job in records.get_many(records.ids_by_status("running")) if job.status == "running"]
    if not jobs:
        return []
    live = workers.live()
    return [(job.id, job.attempts, job.worker) for job in jobs if (job.worker or "") not in live]


class TakeoverWatch:
    """The scan in a daemon thread of each worker process (see the module docstring)."""

    def __init__(
        self,
        records: JobRecords,
        workers: WorkerRegistry,
        publish: Callable[[str], None],
        *,
        interval: float,
        heartbeat_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.records, self.workers, self.publish = records, workers, publish
        self.interval, self.heartbeat_ttl, self.clock = interval, heartbeat_ttl, clock
        self.reachable_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="qalign-takeover", daemon=True)

    def start(self) -> TakeoverWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.scan()
            except Exception:  # the watch must never die: the next scan tries again
                logger.exception("takeover scan failed")

    def store_settled(self) -> bool:
        """Whether heartbeats can be trusted: store reached continuously, and up, for HEARTBEAT_TTL."""
        now = self.clock()
        try:
            uptime = self.workers.uptime()
        except StoreUnavailable:
            self.reachable_since = None
            return False
        if self.reachable_since is None:
            self.reachable_since = now
        return now - self.reachable_since >= self.heartbeat_ttl and (
            uptime is None or uptime >= self.heartbeat_ttl
        )

    def scan(self) -> list[str]:
        """Republish the jobs of lost holders; the ids republished."""
        if not self.store_settled():
            return []
        try:
            lost = orphaned(self.records, self.workers)
        except StoreUnavailable:
            self.reachable_since = None
            return []
        republished: list[str] = []
        for job_id, attempt, holder in lost:
            # One republish per lost attempt across all watchers; the lease expires so a message that
            # was lost on its way (broker down) is published again by a later scan.
            lease = f"takeover:{job_id}:{attempt}"
            try:
                if not self.workers.try_lock(lease, max(self.heartbeat_ttl * 4, 60.0)):
                    continue
            except StoreUnavailable:
                return republished
            logger.warning(
                "republishing job %s: its worker %s stopped heartbeating",
                job_id,
                holder,
                extra={"job_id": job_id, "lost_worker": holder, "attempt": attempt},
            )
            try:
                self.publish(job_id)
            except Exception:  # broker away: the lease expires and a later scan publishes it again
                logger.warning("could not republish job %s", job_id, exc_info=True)
                continue
            republished.append(job_id)
        return republished
