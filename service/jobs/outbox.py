"""The one drainer of job events: it empties the durable outbox that ``JobRecords.apply`` fills.

Every process that serves the API runs one (``Services``); in distributed mode they share the
outbox in Redis and a lease decides which of them drains it, so one drainer delivers at a time and
another takes over within ``lease_s`` when it dies. An event leaves the outbox only after its sink
is done with it (delivered, or given up on and recorded), so the death of any process at any
moment loses nothing: the next drainer delivers what is left (at least once; the webhook-id is
stable, so a receiver drops a duplicate). The events of one job go out in order, one at a time;
different jobs' events go out in parallel on a bounded pool.

At stop (embedded mode: the app's shutdown) the drainer keeps draining for up to ``drain_s``
seconds, then cuts retries short; what is still undelivered stays in the outbox for the next start.

No HTTP here: the sink (``service.webhooks.WebhookSender``) is injected.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from service.jobs.events import OutboxEvent
from service.jobs.periodic import Periodic
from service.jobs.records import JobStoreDown, JobStores

logger = logging.getLogger("qalign.events")

#: The lease that makes one process the drainer (WorkerRegistry.hold).
LEASE = "outbox-drainer"


class EventSink(Protocol):
    def send(self, event: OutboxEvent, stopping: threading.Event) -> bool:
        """Deliver ``event``, or give up on it and record why: True when done with it (it leaves
        the outbox). False only when ``stopping`` cut it short: it stays for the next drain."""
        ...


class OutboxDrainer:
    def __init__(
        self,
        stores: JobStores,
        sink: EventSink,
        *,
        name: str,
        poll_s: float = 0.2,
        lease_s: float = 15.0,
        max_workers: int = 4,
        batch: int = 200,
    ) -> None:
        self.stores, self.sink, self.name = stores, sink, name
        self.poll_s, self.lease_s, self.batch = poll_s, lease_s, batch
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="qalign-events")
        self._lock = threading.Lock()
        self._busy_jobs: set[str] = set()  # jobs with an event being delivered (one at a time)
        self._stopping = threading.Event()  # cut deliveries short (retries stop, events stay)
        self._polls = Periodic(
            "qalign-outbox", poll_s, self._poll, first=0, logger=logger, failure="outbox drain failed"
        )

    def start(self) -> OutboxDrainer:
        self._polls.start()
        return self

    def stop(self, drain_s: float) -> None:
        """Deliver what is pending for up to ``drain_s`` seconds, then stop; the rest stays (for
        the next start, or for the replica that holds the lease: a non-holder stops at once)."""
        self._polls.stop()
        self._polls.join()
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            try:
                if self.drain_once() is None or (self.idle() and self.stores.outbox.count() == 0):
                    break
            except JobStoreDown:
                break
            self._stopping.wait(min(self.poll_s, max(deadline - time.monotonic(), 0)))
        self._stopping.set()
        self._pool.shutdown(wait=True, cancel_futures=True)  # chains not started stay in the outbox
        logger.info("outbox drainer stopped")

    def idle(self) -> bool:
        with self._lock:
            return not self._busy_jobs

    def drain_once(self) -> int | None:
        """Hand the pending events of every job not already being delivered to the pool: the
        number of jobs handed over, or None when another process holds the lease."""
        if not self.stores.workers.hold(LEASE, self.name, self.lease_s):
            return None
        by_job: dict[str, list[OutboxEvent]] = {}
        for event in self.stores.outbox.pending(self.batch):
            by_job.setdefault(event.job_id, []).append(event)
        started = 0
        for job_id, events in by_job.items():
            with self._lock:
                if job_id in self._busy_jobs:
                    continue
                self._busy_jobs.add(job_id)
            self._pool.submit(self._deliver, job_id, events)
            started += 1
        return started

    def _poll(self) -> None:
        try:
            self.drain_once()
        except JobStoreDown as exc:  # the outbox keeps the events: the next pass sends them
            logger.warning("event outbox unreachable: %s", exc)

    def _deliver(self, job_id: str, events: list[OutboxEvent]) -> None:
        """One job's events, in order; each leaves the outbox once its sink is done with it."""
        try:
            for event in events:
                if not self.sink.send(event, self._stopping):
                    return  # cut short by the stop: it and the later ones stay in the outbox
                try:
                    self.stores.outbox.ack(event.id)
                except JobStoreDown:  # stays: delivered again later (same webhook-id)
                    logger.warning("could not remove a delivered event from the outbox", exc_info=True)
                    return
        except Exception:
            logger.exception("event delivery crashed", extra={"job_id": job_id})
        finally:
            with self._lock:
                self._busy_jobs.discard(job_id)
