"""The composition root of one app instance: builds stores, runner, use cases and metrics from
settings, without connecting anywhere (import and create_app stay cheap); connections open on use."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from service.api.access import JobAccess
from service.api.admission import Capacity, RateLimiter, Readiness
from service.api.dispatch import CeleryDispatcher, Dispatcher, EmbeddedDispatcher
from service.api.listing import JobListing
from service.api.metrics import ServiceMetrics
from service.api.submit import Submitter
from service.api.usage import UsageLedger
from service.api.views import JobViews
from service.api.watch import JobFollower
from service.auth import KeyRing
from service.cleanup import Sweeper
from service.jobs import JobStores, StoreUnavailable, open_job_stores
from service.jobs.embedded import EmbeddedRunner
from service.jobs.model import worker_name
from service.jobs.outbox import OutboxDispatcher
from service.jobs.runner import PipelineFactory, load_pipeline
from service.settings import Settings
from service.storage import ObjectStore, make_object_store
from service.webhooks import WebhookSender

logger = logging.getLogger("qalign.api")


@dataclass
class Services:
    settings: Settings
    stores: JobStores
    store: ObjectStore
    dispatcher: Dispatcher
    metrics: ServiceMetrics
    keys: KeyRing
    readiness: Readiness
    submitter: Submitter
    jobs: JobAccess
    events: OutboxDispatcher
    views: JobViews
    follower: JobFollower
    listing: JobListing
    rate_limiter: RateLimiter
    usage: UsageLedger
    sweeper: Sweeper | None = None

    @classmethod
    def from_settings(cls, settings: Settings, pipeline_factory: PipelineFactory | None = None) -> Services:
        """``pipeline_factory`` replaces the embedded worker's model loader (tests)."""
        stores, store = open_job_stores(settings), make_object_store(settings)
        events = OutboxDispatcher(
            stores,
            WebhookSender(settings, store, stores),
            name=f"api:{worker_name()}",
            poll_s=settings.outbox_poll_s,
            max_workers=settings.webhook_workers,
        )
        if settings.embedded:
            runner = EmbeddedRunner(settings, stores, store, pipeline_factory or load_pipeline)
            dispatcher: Dispatcher = EmbeddedDispatcher(runner)
        else:
            dispatcher = CeleryDispatcher(settings, stores)
        metrics = ServiceMetrics(stores)
        readiness = Readiness(settings, stores, store, dispatcher)
        capacity = Capacity(settings, stores)
        jobs = JobAccess(settings, stores, store)
        return cls(
            settings=settings,
            stores=stores,
            store=store,
            dispatcher=dispatcher,
            metrics=metrics,
            keys=KeyRing.from_settings(settings.api_keys, settings.revoked_api_keys),
            readiness=readiness,
            submitter=Submitter(settings, stores, store, dispatcher, readiness, capacity, metrics),
            jobs=jobs,
            events=events,
            views=JobViews(settings, stores, store),
            follower=JobFollower(settings, jobs),
            listing=JobListing(stores),
            rate_limiter=RateLimiter(settings, stores),
            usage=UsageLedger(stores),
            sweeper=Sweeper(stores, store, settings),
        )

    def start(self) -> None:
        if self.keys.open:
            logger.warning(
                "open mode: no API keys configured (QALIGN_API_KEYS), anyone who can reach the API can use it"
            )
        try:  # records of an earlier version, brought up to date here and never in a request
            self.stores.records.migrate()
        except StoreUnavailable as exc:
            logger.warning("job records not migrated at start (the expiry sweep retries): %s", exc)
        self.dispatcher.start()
        self.events.start()
        if self.sweeper is not None:
            self.sweeper.start()

    def close(self) -> None:
        """Stop taking work, then deliver the events still pending (a bounded wait: the rest
        stays in the outbox for the next start), then close the stores."""
        if self.sweeper is not None:
            self.sweeper.stop()
        self.dispatcher.stop()
        self.events.stop(drain_s=self.settings.webhook_drain_s)
        self.stores.close()
