"""Prometheus metrics of the API, plus job and worker figures read from the job store at scrape time.

Workers never serve metrics themselves: each stage duration a worker measures is added to
aggregate histogram counters in the job store (a Redis hash in distributed mode), and every API
process exposes those aggregates. Job counts, queue depth and worker GPU memory (from heartbeats)
are read at scrape time too, so any API replica answers with the whole deployment's numbers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qalign_schema.jobs import UNDELIVERED_REASONS
from service.http.problems import CLIENT_GONE
from service.jobs.records import (
    STAGE_BUCKETS,
    WEBHOOKS_UNDELIVERED,
    EventCounters,
    JobStoreDown,
    JobStores,
    enqueued_at,
)

logger = logging.getLogger("qalign.metrics")


class JobStoreCollector:
    """Jobs by status, queue depth, stage-duration histograms and live workers, read per scrape."""

    def __init__(self, stores: JobStores) -> None:
        self.stores = stores

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("qalign_job_store_up", "1 when the job store answered this scrape")
        try:
            counts = self.stores.records.count_by_status()
            stages = self.stores.stages.snapshot()
            workers = self.stores.workers.live()
            outbox = self.stores.outbox.count()
            oldest = self._oldest_queued_age()
        except JobStoreDown:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        by_status = GaugeMetricFamily("qalign_jobs", "Job records by status", labels=["status"])
        for status, n in counts.items():
            by_status.add_metric([status], n)
        yield by_status
        depth = GaugeMetricFamily("qalign_queue_depth", "Jobs waiting for a worker")
        depth.add_metric([], counts.get("queued", 0))
        yield depth
        age = GaugeMetricFamily(
            "qalign_queue_oldest_age_seconds",
            "Seconds the longest-waiting queued job has waited since submission (0 when none waits)",
        )
        age.add_metric([], oldest)
        yield age
        histogram = HistogramMetricFamily(
            "qalign_stage_duration_seconds", "Time jobs spent in each stage", labels=["stage"]
        )
        for stage, stats in stages.items():
            bounds = [str(float(b)) for b in STAGE_BUCKETS] + ["+Inf"]
            histogram.add_metric([stage], list(zip(bounds, stats["buckets"], strict=True)), stats["sum"])
        yield histogram
        pending = GaugeMetricFamily(
            "qalign_events_pending", "Job events (webhooks) in the durable outbox, not yet delivered"
        )
        pending.add_metric([], outbox)
        yield pending
        live = GaugeMetricFamily("qalign_workers_live", "Workers with a fresh heartbeat")
        live.add_metric([], len(workers))
        yield live
        gpu = GaugeMetricFamily(
            "qalign_worker_gpu_memory_bytes", "GPU memory allocated by each worker", labels=["worker"]
        )
        for name, info in workers.items():
            if info.get("gpu_memory_bytes") is not None:
                gpu.add_metric([name], info["gpu_memory_bytes"])
        yield gpu

    def _oldest_queued_age(self) -> float:
        """The age of the first job in queue order (the queue holds at most QALIGN_MAX_QUEUE_DEPTH)."""
        first = self.stores.records.ids_by_status("queued")[:1]
        job = self.stores.records.get(first[0]) if first else None
        return max(0.0, time.time() - enqueued_at(job)) if job is not None else 0.0


class ServiceMetrics:
    """A registry per app instance, so several apps (tests, restarts) never collide."""

    def __init__(self, stores: JobStores) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "qalign_http_requests", "HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "qalign_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
        )
        self.submitted = Counter(
            "qalign_jobs_submitted", "Jobs accepted by this API process", registry=self.registry
        )
        ProcessCollector(registry=self.registry)
        self.registry.register(JobStoreCollector(stores))
        self.registry.register(UndeliveredWebhookCollector(stores.counters))


class UndeliveredWebhookCollector:
    """``qalign_webhooks_undelivered_total{reason}`` from the shared event counters, per scrape:
    the events every process of the deployment gave up on (workers included)."""

    def __init__(self, counters: EventCounters) -> None:
        self.counters = counters

    def collect(self) -> Iterator[Metric]:
        try:
            counts = self.counters.snapshot(WEBHOOKS_UNDELIVERED)
        except JobStoreDown:  # qalign_job_store_up says so; a counter must not drop to zero
            return
        family = CounterMetricFamily(
            "qalign_webhooks_undelivered",
            "Webhook events given up on by any process of the service (also recorded on the job)",
            labels=["reason"],
        )
        for reason in UNDELIVERED_REASONS:
            family.add_metric([reason], counts.get(reason, 0))
        yield family


class MetricsMiddleware:
    """Counts requests and latencies by route template (not raw path: ids would explode labels)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            code = "499" if scope.get(CLIENT_GONE) else str(status[0])
            self.metrics.requests.labels(method, template, code).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
