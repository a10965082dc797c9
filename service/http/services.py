"""The composition root of one app instance: builds stores, runner, use cases and metrics from
settings, without connecting anywhere (import and create_app stay cheap); connections open on use."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from service.auth import KeyRing
from service.backends import open_job_stores
from service.backends.blobs import BlobStore, open_blob_store
from service.http.metrics import ServiceMetrics
from service.http.views import JobViews
from service.http.watch import JobFollower
from service.jobs import JobStoreDown, JobStores
from service.jobs.cleanup import Sweeper
from service.jobs.embedded import EmbeddedRunner
from service.jobs.model import worker_name
from service.jobs.outbox import OutboxDrainer
from service.jobs.runner import PipelineFactory, load_pipeline
from service.settings import Settings
from service.usecases.access import JobAccess
from service.usecases.admission import Capacity, RateLimiter, Readiness
from service.usecases.job_queue import CeleryJobQueue, EmbeddedJobQueue, JobQueue
from service.usecases.listing import JobListing
from service.usecases.submit import Submitter
from service.usecases.usage import UsageLedger
from service.webhooks import WebhookSender

logger = logging.getLogger("qalign.api")


@dataclass
class Services:
    settings: Settings
    stores: JobStores
    blobs: BlobStore
    queue: JobQueue
    metrics: ServiceMetrics
    keys: KeyRing
    readiness: Readiness
    submitter: Submitter
    jobs: JobAccess
    events: OutboxDrainer
    views: JobViews
    follower: JobFollower
    listing: JobListing
    rate_limiter: RateLimiter
    usage: UsageLedger
    sweeper: Sweeper | None = None

    @classmethod
    def from_settings(cls, settings: Settings, pipeline_factory: PipelineFactory | None = None) -> Services:
        """``pipeline_factory`` replaces the embedded worker's model loader (tests)."""
        stores, blobs = open_job_stores(settings), open_blob_store(settings)
        events = OutboxDrainer(
            stores,
            WebhookSender(settings, blobs, stores),
            name=f"api:{worker_name()}",
            poll_s=settings.outbox_poll_s,
            max_workers=settings.webhook_workers,
        )
        if settings.embedded:
            runner = EmbeddedRunner(settings, stores, blobs, pipeline_factory or load_pipeline)
            queue: JobQueue = EmbeddedJobQueue(runner)
        else:
            queue = CeleryJobQueue(settings, stores)
        metrics = ServiceMetrics(stores)
        readiness = Readiness(settings, stores, blobs, queue)
        capacity = Capacity(settings, stores)
        jobs = JobAccess(settings, stores, blobs)
        return cls(
            settings=settings,
            stores=stores,
            blobs=blobs,
            queue=queue,
            metrics=metrics,
            keys=KeyRing.from_settings(settings.api_keys, settings.revoked_api_keys),
            readiness=readiness,
            submitter=Submitter(settings, stores, blobs, queue, readiness, capacity, metrics.submitted),
            jobs=jobs,
            events=events,
            views=JobViews(settings, stores, blobs),
            follower=JobFollower(settings, jobs),
            listing=JobListing(stores),
            rate_limiter=RateLimiter(settings, stores),
            usage=UsageLedger(stores),
            sweeper=Sweeper(stores, blobs, settings),
        )

    def start(self) -> None:
        if self.keys.open:
            logger.warning(
                "open mode: no API keys configured (QALIGN_API_KEYS), anyone who can reach the API can use it"
            )
        try:  # records of an earlier version, brought up to date here and never in a request
            self.stores.records.migrate()
        except JobStoreDown as exc:
            logger.warning("job records not migrated at start (the expiry sweep retries): %s", exc)
        self.queue.start()
        self.events.start()
        if self.sweeper is not None:
            self.sweeper.start()

    def close(self) -> None:
        """Stop taking work, then deliver the events still pending (a bounded wait: the rest
        stays in the outbox for the next start), then close the stores."""
        if self.sweeper is not None:
            self.sweeper.stop()
        self.queue.stop()
        self.events.stop(drain_s=self.settings.webhook_drain_s)
        self.stores.close()
