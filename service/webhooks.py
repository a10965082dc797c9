"""Webhook delivery: Standard Webhooks-signed POSTs of the job object, retried with backoff, SSRF-guarded.

A receiver that keeps failing never fails the job: delivery logs, records the event as undelivered
on the job record, counts it, and nothing raises. URLs are checked by ``service.netguard``: every
address the host resolves to must be public unless QALIGN_WEBHOOK_ALLOW_HOSTS exempts it, and the
POST goes to exactly the checked address (no second resolution, so no DNS rebinding). The check
runs at submission (a clear 422) and again before every delivery attempt (DNS can change).

Signing follows Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id`` (the same for
every retry of one event), ``webhook-timestamp`` (unix seconds of the attempt) and
``webhook-signature: v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}">`` (qalign_schema.signing,
which receivers' ``qalign_client.webhooks.verify`` shares). The older
``X-QAlign-Signature`` header (HMAC of the body alone, replayable) is still sent but deprecated.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

import httpx

from qalign_schema.signing import sign
from service.jobs.model import TERMINAL, Job, UndeliveredWebhook, utcnow
from service.jobs.public import job_json
from service.jobs.store import WEBHOOKS_UNDELIVERED, JobStores, StoreUnavailable
from service.netguard import (
    HostNotResolved,
    NetPolicy,
    PinnedUrl,
    Resolver,
    UrlRefused,
    describe,
    open_pinned,
    pin,
    resolve,
)
from service.settings import Settings
from service.storage import ObjectStore

log = logging.getLogger("qalign.webhooks")

#: Deprecated: ``sha256=<hex HMAC-SHA256 of the body>``; no id or timestamp, so it can be replayed.
SIGNATURE_HEADER = "X-QAlign-Signature"
#: The events a job sends and a ``webhook_events_filter`` may name: running, then the terminal status.
EVENTS = ("start", "completed")
WebhookRefused = UrlRefused


def legacy_sign(body: bytes, secret: str) -> str:
    """Deprecated ``X-QAlign-Signature``: ``sha256=<hex HMAC-SHA256 of the body under the secret>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def legacy_verify(body: bytes, secret: str, signature: str) -> bool:
    return hmac.compare_digest(legacy_sign(body, secret), signature)


def event_of(status: str) -> str | None:
    """The filterable event a status change is: ``start`` (running) or ``completed`` (terminal)."""
    if status == "running":
        return "start"
    return "completed" if status in TERMINAL else None


def webhook_id(job_id: str, status: str) -> str:
    """One id per job and status: retries (and a redelivered duplicate) carry the same id."""
    return f"job_{job_id}_{status}"


def webhook_policy(
    allow_hosts: Iterable[str] = (), resolver: Resolver = resolve, ca_bundle: str | None = None
) -> NetPolicy:
    return NetPolicy(
        schemes=("http", "https"),
        allow=tuple(allow_hosts),
        allow_setting="QALIGN_WEBHOOK_ALLOW_HOSTS",
        ca_bundle=str(ca_bundle) if ca_bundle else None,
        resolver=resolver,
    )


def check_webhook_url(url: str, allow_hosts: Iterable[str] = (), resolver: Resolver = resolve) -> PinnedUrl:
    """The pinned URL, or WebhookRefused unless ``url`` is http(s) to a host with allowed addresses."""
    return pin(url, webhook_policy(allow_hosts, resolver), name="webhook_url")


class Outcome(NamedTuple):
    delivered: bool
    detail: str  # "HTTP 204", or why it was not delivered


def deliver(
    url: str,
    body: bytes,
    secret: str,
    *,
    msg_id: str,
    allow_hosts: Iterable[str] = (),
    attempts: int = 5,
    backoff_s: float = 0.5,
    timeout_s: float = 5.0,
    ca_bundle: str | None = None,
    resolver: Resolver = resolve,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> Outcome:
    """POST ``body`` to ``url`` until a 2xx answer, at most ``attempts`` times; never raises.

    Every attempt re-checks and re-pins the URL and signs with its own timestamp (a receiver
    checks the timestamp, so a retry minutes later still verifies); the id stays ``msg_id``.
    """
    policy = webhook_policy(allow_hosts, resolver, ca_bundle)
    outcome = "not attempted"
    for attempt in range(1, attempts + 1):
        try:
            pinned = pin(url, policy, name="webhook_url")
        except HostNotResolved as exc:  # DNS trouble may pass: retried like a failed POST
            pinned, outcome = None, str(exc)
        except UrlRefused as exc:
            log.warning("webhook refused", extra={"url": url, "reason": str(exc)})
            return Outcome(False, f"refused: {exc}")
        if pinned is not None:
            status, outcome = _post(pinned, policy, body, secret, msg_id, int(clock()), timeout_s)
            if status is not None and 200 <= status < 300:
                return Outcome(True, outcome)
        log.warning("webhook attempt failed", extra={"url": url, "attempt": attempt, "outcome": outcome})
        if attempt < attempts:
            sleep(backoff_s * 2 ** (attempt - 1))
    return Outcome(False, f"{attempts} attempt(s) failed, last: {outcome}")


def _post(
    pinned: PinnedUrl,
    policy: NetPolicy,
    body: bytes,
    secret: str,
    msg_id: str,
    timestamp: int,
    timeout_s: float,
) -> tuple[int | None, str]:
    """One signed POST to the pinned address: (status, "HTTP <status>"), or (None, why it failed)."""
    headers = {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
        SIGNATURE_HEADER: legacy_sign(body, secret),
    }
    try:
        with open_pinned(pinned, "POST", policy, timeout=timeout_s, content=body, headers=headers) as answer:
            return answer.status_code, f"HTTP {answer.status_code}"
    except httpx.HTTPError as exc:
        return None, describe(exc)


@dataclass(frozen=True)
class WebhookEvent:
    """One event of one job, as queued: the body is built once, so every retry sends the same bytes."""

    job_id: str
    status: str
    url: str
    body: bytes

    @property
    def msg_id(self) -> str:
        return webhook_id(self.job_id, self.status)


#: Called with an event that will never be delivered and why (queue full, refused, attempts spent).
Undelivered = Callable[[WebhookEvent, str, str], None]


class WebhookDelivery:
    """One bounded executor for every webhook of this process: at most ``max_workers`` threads and
    ``max_pending`` queued events; the events of one job go out in order.

    ``post(event)`` never blocks and never raises. An event past the bound, refused by the SSRF
    check or failing every attempt is *undelivered*: logged and handed to ``on_undelivered`` with
    its reason (queue_full, refused, failed), which counts it and records it on the job.
    """

    def __init__(
        self,
        secret: str,
        *,
        allow_hosts: Iterable[str] = (),
        attempts: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 5.0,
        max_workers: int = 4,
        max_pending: int = 1000,
        ca_bundle: str | None = None,
        resolver: Resolver = resolve,
        on_undelivered: Undelivered | None = None,
    ) -> None:
        self.secret, self.allow_hosts = secret, tuple(allow_hosts)
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s
        self.max_pending, self.max_workers = max_pending, max_workers
        self.ca_bundle, self.resolver, self.on_undelivered = ca_bundle, resolver, on_undelivered
        self._lock = threading.Lock()
        self._chains: dict[str, deque[WebhookEvent]] = {}
        self._ready: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pending = 0

    def post(self, event: WebhookEvent) -> None:
        """Queue ``event``; the events of one job keep their order."""
        with self._lock:
            full = self._pending >= self.max_pending
            if not full:
                self._pending += 1
                chain = self._chains.get(event.job_id)
                if chain is not None:  # a drain of this job is running: it will take this one too
                    chain.append(event)
                    return
                self._chains[event.job_id] = deque([event])
                if len(self._threads) < self.max_workers:  # threads start on demand, up to the bound
                    # Daemon threads: a receiver that keeps failing must not hold the process at exit.
                    thread = threading.Thread(target=self._work, name="qalign-webhook", daemon=True)
                    self._threads.append(thread)
                    thread.start()
        if full:
            detail = f"the delivery queue is full ({self.max_pending} events waiting)"
            self.give_up(event, "queue_full", detail)
            return
        self._ready.put(event.job_id)

    def _work(self) -> None:
        while (key := self._ready.get()) is not None:
            self._drain(key)

    def _drain(self, key: str) -> None:
        while True:
            with self._lock:
                chain = self._chains[key]
                if not chain:
                    del self._chains[key]
                    return
                event = chain.popleft()
            try:
                outcome = deliver(
                    event.url,
                    event.body,
                    self.secret,
                    msg_id=event.msg_id,
                    allow_hosts=self.allow_hosts,
                    attempts=self.attempts,
                    backoff_s=self.backoff_s,
                    timeout_s=self.timeout_s,
                    ca_bundle=self.ca_bundle,
                    resolver=self.resolver,
                )
            except Exception as exc:  # deliver never raises by design; belt and braces for the pool
                log.exception("webhook delivery crashed", extra={"url": event.url})
                outcome = Outcome(False, describe(exc))
            try:
                if not outcome.delivered:
                    reason = "refused" if outcome.detail.startswith("refused") else "failed"
                    self.give_up(event, reason, outcome.detail)
            finally:
                with self._lock:
                    self._pending -= 1

    def give_up(self, event: WebhookEvent, reason: str, detail: str) -> None:
        """The one place an event is abandoned: a log line, then ``on_undelivered``."""
        log.warning(
            "webhook undelivered: %s",
            detail,
            extra={"job_id": event.job_id, "url": event.url, "webhook_id": event.msg_id, "reason": reason},
        )
        if self.on_undelivered is not None:
            try:
                self.on_undelivered(event, reason, detail)
            except Exception:  # recording is best effort; the log line stands
                log.warning("could not record the undelivered webhook", exc_info=True)

    def idle(self) -> bool:
        """No event queued or being delivered."""
        with self._lock:
            return self._pending == 0

    def close(self) -> None:
        """Let the delivery threads end once the queued events are out."""
        with self._lock:
            threads = len(self._threads)
        for _ in range(threads):
            self._ready.put(None)


class JobWebhooks:
    """The ``JobEvents`` publisher of the job runtime: a job's status changes as signed webhooks.

    Only the events the job's ``webhook_events`` filter names are sent (both when unset). Building
    the body presigns the result URL, which can fail (store down): that is logged and the event
    recorded as undelivered, never raised into the caller (a cancel or a run must not fail on it).
    With ``stores``, undelivered events are written to the job record (``webhook_undelivered``) and
    counted in the shared event counters, which every API replica reports to Prometheus.
    """

    def __init__(
        self,
        settings: Settings,
        store: ObjectStore,
        delivery: WebhookDelivery | None = None,
        stores: JobStores | None = None,
    ) -> None:
        self.settings, self.store, self.stores = settings, store, stores
        self.delivery = delivery
        if delivery is None and settings.webhook_secret:
            self.delivery = WebhookDelivery(
                settings.webhook_secret,
                allow_hosts=settings.allowed_webhook_hosts,
                attempts=settings.webhook_attempts,
                backoff_s=settings.webhook_backoff_s,
                timeout_s=settings.webhook_timeout_s,
                max_workers=settings.webhook_workers,
                max_pending=settings.webhook_queue_size,
                ca_bundle=str(settings.outbound_ca_bundle) if settings.outbound_ca_bundle else None,
            )
        if self.delivery is not None and self.delivery.on_undelivered is None:
            self.delivery.on_undelivered = self.record_undelivered

    def publish(self, job: Job) -> None:
        if not job.webhook_url:
            return
        event = event_of(job.status)
        if event is None or event not in (job.webhook_events or EVENTS):
            return
        if self.delivery is None:
            log.warning("job has a webhook_url but QALIGN_WEBHOOK_SECRET is unset; not delivered")
            return
        try:
            body = job_json(job, self.store, self.settings)
        except Exception as exc:  # e.g. presigning failed: the job's outcome stands regardless
            log.warning("could not build the webhook body", exc_info=True, extra={"job_id": job.id})
            failed = WebhookEvent(job.id, job.status, job.webhook_url, b"")
            self.delivery.give_up(failed, "failed", f"the body could not be built: {describe(exc)}")
            return
        self.delivery.post(WebhookEvent(job.id, job.status, job.webhook_url, body))

    def record_undelivered(self, event: WebhookEvent, reason: str, detail: str) -> None:
        """Count the event and append it to its job record, where operators (and support) read it."""
        if self.stores is None:
            return
        try:
            self.stores.counters.add(WEBHOOKS_UNDELIVERED, reason)
        except StoreUnavailable:  # the log line and the record still say it
            log.warning("could not count the undelivered webhook", exc_info=True)
        entry = UndeliveredWebhook(
            webhook_id=event.msg_id, status=event.status, reason=reason, detail=detail[:500], at=utcnow()
        )

        def append(job: Job) -> Job:
            return job.model_copy(update={"webhook_undelivered": [*job.webhook_undelivered, entry]})

        self.stores.records.modify(event.job_id, append)

    def close(self) -> None:
        if self.delivery is not None:
            self.delivery.close()
