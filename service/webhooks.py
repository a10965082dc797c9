"""Webhook delivery: Standard Webhooks-signed POSTs of the job object, retried with backoff, SSRF-guarded.

A receiver that keeps failing never fails the job: delivery logs, records the event as undelivered
on the job record, counts it, and nothing raises. URLs are checked by ``service.netguard``: every
address the host resolves to must be public unless QALIGN_WEBHOOK_ALLOW_HOSTS exempts it, and the
POST goes to exactly the checked address (no second resolution, so no DNS rebinding). The check
runs at submission (a clear 422) and again before every delivery attempt (DNS can change).

Signing follows Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id`` (the same for
every retry of one event), ``webhook-timestamp`` (unix seconds of the attempt) and
``webhook-signature: v1,<base64 HMAC-SHA256 over "{id}.{timestamp}.{body}">`` (qalign_schema.signing,
which receivers' ``qalign_client.webhooks.verify`` shares). Nothing else is signed or sent: the
first API version's ``X-QAlign-Signature`` (HMAC of the body alone, replayable) is gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

import httpx
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from qalign_schema.jobs import UndeliveredReason
from qalign_schema.signing import sign
from service.backends.blobs import BlobStore
from service.jobs.events import OutboxEvent
from service.jobs.model import Job, UndeliveredWebhook, utcnow
from service.jobs.public import job_json
from service.jobs.records import WEBHOOKS_UNDELIVERED, JobStoreDown, JobStores
from service.netguard import (
    HostNotResolved,
    NetPolicy,
    PinnedUrl,
    Resolver,
    UrlRefused,
    describe,
    open_pinned,
    pin,
    public_reason,
    redact_url,
    resolve,
)
from service.settings import Settings

log = logging.getLogger("qalign.webhooks")

WebhookRefused = UrlRefused


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
    interrupted: bool = False  # ``stop`` was set before delivery: try again later


class _AttemptFailed(Exception):
    """One delivery attempt failed in a way a later one may not (an answer other than 2xx, DNS)."""


class _Stopped(Exception):
    """``stop`` was set during the backoff before the next attempt."""


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
    stop: threading.Event | None = None,
) -> Outcome:
    """POST ``body`` to ``url`` until a 2xx answer, at most ``attempts`` times; never raises.

    Every attempt re-checks and re-pins the URL and signs with its own timestamp (a receiver
    checks the timestamp, so a retry minutes later still verifies); the id stays ``msg_id``.
    ``stop`` (the process is stopping) ends the backoff at once: the outcome is ``interrupted``.
    """
    policy = webhook_policy(allow_hosts, resolver, ca_bundle)
    failures: list[str] = []  # what each failed attempt ended with, in order

    def attempt() -> Outcome:
        try:
            pinned = pin(url, policy, name="webhook_url")
        except HostNotResolved as exc:  # DNS trouble may pass: retried like a failed POST
            status, outcome = None, str(exc)
        except UrlRefused as exc:
            log.warning("webhook refused", extra={"url": redact_url(url), "reason": str(exc)})
            return Outcome(False, f"refused: {exc}")
        else:
            status, outcome = _post(pinned, policy, body, secret, msg_id, int(clock()), timeout_s)
            if status is not None and 200 <= status < 300:
                return Outcome(True, outcome)
        failures.append(outcome)
        log.warning(
            "webhook attempt failed",
            extra={"url": redact_url(url), "attempt": len(failures), "outcome": outcome},
        )
        raise _AttemptFailed(outcome)

    def pause(seconds: float) -> None:
        if stop is None:
            sleep(seconds)
        elif stop.wait(seconds):
            raise _Stopped

    retrying = Retrying(
        retry=retry_if_exception_type(_AttemptFailed),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=backoff_s),  # backoff_s, then doubling
        sleep=pause,
        retry_error_callback=lambda _: Outcome(False, f"{attempts} attempt(s) failed, last: {failures[-1]}"),
    )
    try:
        return retrying(attempt)
    except _Stopped:
        return Outcome(False, f"stopped after {len(failures)} attempt(s), last: {failures[-1]}", True)


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
    }
    try:
        with open_pinned(pinned, "POST", policy, timeout=timeout_s, content=body, headers=headers) as answer:
            return answer.status_code, f"HTTP {answer.status_code}"
    except httpx.HTTPError as exc:
        # The outcome is recorded on the job, which the caller reads: a category, not the error text.
        log.info("webhook POST failed", extra={"url": redact_url(str(pinned.url)), "error": describe(exc)})
        return None, public_reason(exc)


class WebhookSender:
    """The outbox drainer's sink (``service.jobs.outbox.EventSink``): one event as a signed
    webhook POST, built from the record as it was at the change.

    An event of a job that no longer exists (erased, expired) is dropped unsent. An event that
    cannot be delivered (URL refused, every attempt failed, the body could not be built) is
    *undelivered*: logged, counted in the shared event counters (every API replica reports them)
    and appended to its job record (``webhook_undelivered``), and then it leaves the outbox.
    """

    def __init__(self, settings: Settings, blobs: BlobStore, stores: JobStores) -> None:
        self.settings, self.blobs, self.stores = settings, blobs, stores

    def send(self, event: OutboxEvent, stopping: threading.Event) -> bool:
        job = event.job
        if job.webhook_url is None:
            return True
        if self.stores.records.get(event.job_id) is None:
            log.info("job erased or expired: its event is not sent", extra={"webhook_id": event.id})
            return True
        secret = self.settings.webhook_secret
        if not secret:
            self.give_up(event, "refused", "QALIGN_WEBHOOK_SECRET is unset: webhooks cannot be signed")
            return True
        try:
            body = job_json(job, self.blobs, self.settings)
        except Exception as exc:  # e.g. presigning failed: the job's outcome stands regardless
            log.warning("could not build the webhook body", exc_info=True, extra={"job_id": job.id})
            self.give_up(event, "failed", f"the body could not be built: {describe(exc)}")
            return True
        outcome = deliver(
            job.webhook_url,
            body,
            secret,
            msg_id=event.id,
            allow_hosts=self.settings.allowed_webhook_hosts,
            attempts=self.settings.webhook_attempts,
            backoff_s=self.settings.webhook_backoff_s,
            timeout_s=self.settings.webhook_timeout_s,
            ca_bundle=str(self.settings.outbound_ca_bundle) if self.settings.outbound_ca_bundle else None,
            stop=stopping,
        )
        if outcome.interrupted:
            return False
        if not outcome.delivered:
            self.give_up(
                event, "refused" if outcome.detail.startswith("refused") else "failed", outcome.detail
            )
        return True

    def give_up(self, event: OutboxEvent, reason: UndeliveredReason, detail: str) -> None:
        """The one place an event is abandoned: a log line, the counter, the job record."""
        log.warning(
            "webhook undelivered: %s",
            detail,
            extra={
                "job_id": event.job_id,
                "url": redact_url(event.job.webhook_url or ""),
                "webhook_id": event.id,
                "reason": reason,
            },
        )
        try:
            self.stores.counters.add(WEBHOOKS_UNDELIVERED, reason)
        except JobStoreDown:  # the log line and the record still say it
            log.warning("could not count the undelivered webhook", exc_info=True)
        entry = UndeliveredWebhook(
            webhook_id=event.id, status=event.status, reason=reason, detail=detail[:500], at=utcnow()
        )

        def note(job: Job) -> Job:
            return job.model_copy(update={"webhook_undelivered": [*job.webhook_undelivered, entry]})

        try:
            self.stores.records.apply(event.job_id, note)
        except JobStoreDown:
            log.warning("could not record the undelivered webhook on its job", exc_info=True)
