"""Host loss: live workers find ``running`` jobs whose holder stopped heartbeating and republish them.

A worker that dies with its whole host (SIGKILL of parent and pool child, a lost VM) leaves its job
``running`` and its broker message unacknowledged; the broker gives the message back only after the
visibility timeout (job_hard_time_limit + 300 s by default). Every live worker therefore scans the
running jobs every TAKEOVER_CHECK_INTERVAL seconds: a job whose holder has no fresh heartbeat is
published again (once per lost attempt, under a short lease), and the atomic claim of whichever
worker receives it takes it over (``lifecycle.claim``). The visibility timeout stays as the last
resort. Takeover therefore happens within HEARTBEAT_TTL + TAKEOVER_CHECK_INTERVAL plus one delivery.

The same scan republishes ``queued`` jobs whose broker message is stranded (``lifecycle.stranded``):
delivered to a worker that died before it claimed the job (the message would wait in the broker's
``unacked`` hash until the visibility timeout), or lost outright. That happens within
STRANDED_MESSAGE_AFTER + max(TAKEOVER_CHECK_INTERVAL, STRANDED_MESSAGE_AFTER / 4) of the delivery (or of
the loss) plus one delivery: the broker is read at most four times per STRANDED_MESSAGE_AFTER.

No false alarms after a job-store outage: heartbeats stop while the store is unreachable, so the
scan acts only once this process has reached the store continuously for HEARTBEAT_TTL and the store
itself has been up that long (a restarted Redis forgets keys whose TTL ran out meanwhile); by then
every live holder has written a fresh heartbeat again.

This module needs neither Celery nor HTTP: the worker injects ``publish``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from service.jobs import lifecycle
from service.jobs.periodic import Periodic
from service.jobs.records import JobRecords, JobStoreDown, WorkerRegistry

logger = logging.getLogger("qalign.worker")


def orphaned(records: JobRecords, workers: WorkerRegistry) -> list[lifecycle.Republish]:
    """The running jobs whose holder has no fresh heartbeat (``lifecycle.lost_holders``); the records
    are read before the heartbeats."""
    jobs = records.get_many(records.ids_by_status("running"))
    if not jobs:
        return []
    return lifecycle.lost_holders(jobs, workers.live())


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
        broker: Callable[[], lifecycle.BrokerView] | None = None,
        stranded_after: float = 60.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.records, self.workers, self.publish = records, workers, publish
        self.interval, self.heartbeat_ttl, self.clock = interval, heartbeat_ttl, clock
        self.broker, self.stranded_after, self.wall_clock = broker, stranded_after, wall_clock
        self.reachable_since: float | None = None
        #: Queued job id -> when this scan first found its message nowhere in the broker (epoch s).
        self.absent_since: dict[str, float] = {}
        self._broker_read_at = -math.inf
        self._scans = Periodic(
            "qalign-takeover", interval, self.scan, logger=logger, failure="takeover scan failed"
        )

    def start(self) -> TakeoverWatch:
        self._scans.start()
        return self

    def stop(self) -> None:
        self._scans.stop()

    def store_settled(self) -> bool:
        """Whether heartbeats can be trusted: store reached continuously, and up, for HEARTBEAT_TTL."""
        now = self.clock()
        try:
            uptime = self.workers.uptime()
        except JobStoreDown:
            self.reachable_since = None
            return False
        if self.reachable_since is None:
            self.reachable_since = now
        return now - self.reachable_since >= self.heartbeat_ttl and (
            uptime is None or uptime >= self.heartbeat_ttl
        )

    def scan(self) -> list[str]:
        """Republish the jobs of lost holders, and the queued jobs whose message is stranded; the ids
        republished."""
        if not self.store_settled():
            return []
        try:
            lost = orphaned(self.records, self.workers)
            lost += self.stranded()
        except JobStoreDown:
            self.reachable_since = None
            return []
        republished: list[str] = []
        for job in lost:
            # One republish per lost attempt (or stranded message) across all watchers; the lease
            # expires so a message that was lost on its way (broker down) is published again later.
            lease = f"takeover:{job.job_id}:{job.attempt}:{'held' if job.holder else 'queued'}"
            ttl = max(self.heartbeat_ttl * 4, 60.0) if job.holder else self.stranded_after
            try:
                if not self.workers.try_lock(lease, ttl):
                    continue
            except JobStoreDown:
                return republished
            logger.warning(
                "republishing job %s: %s",
                job.job_id,
                job.reason,
                extra={"job_id": job.job_id, "lost_worker": job.holder, "attempt": job.attempt},
            )
            try:
                self.publish(job.job_id)
            except Exception:  # broker away: the lease expires and a later scan publishes it again
                logger.warning("could not republish job %s", job.job_id, exc_info=True)
                continue
            republished.append(job.job_id)
        return republished

    def stranded(self) -> list[lifecycle.Republish]:
        """Queued jobs whose broker message is lost or held by a dead worker (``lifecycle.stranded``).

        The queued records are read before the broker and read again after it: a job claimed (or
        finished) meanwhile is left alone, and a message moving from the queue to a worker is seen.
        """
        # The broker is read at most four times per bound: it lists every waiting message.
        if self.broker is None or self.clock() - self._broker_read_at < self.stranded_after / 4:
            return []
        if not self.records.ids_by_status("queued"):
            self.absent_since.clear()
            return []
        self._broker_read_at = self.clock()
        try:
            view = self.broker()
        except Exception:  # the broker is away: nothing can be republished now anyway
            logger.warning("could not read the broker", exc_info=True)
            return []
        queued = self.records.get_many(self.records.ids_by_status("queued"))
        return lifecycle.stranded(
            queued, view, self.absent_since, now=self.wall_clock(), after=self.stranded_after
        )
