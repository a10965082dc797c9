"""Webhook delivery: HMAC-signed POSTs of the job object, retried with backoff, SSRF-guarded.

A receiver that keeps failing never fails the job: delivery returns False and logs, nothing raises.
URLs are refused when any address their host resolves to is loopback, private, link-local (cloud
metadata lives there), multicast, reserved or unspecified, unless the host is on the allow-list.
The check runs at submission (a clear 422) and again before every delivery (DNS can change).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import httpx

from service.jobs.model import Job
from service.jobs.public import job_json
from service.settings import Settings
from service.storage import ObjectStore

log = logging.getLogger("qalign.webhooks")

SIGNATURE_HEADER = "X-QAlign-Signature"
Resolver = Callable[[str, int], list[str]]


class WebhookRefused(ValueError):
    """The webhook URL may not be called; the message says why and what is allowed."""


def sign(body: bytes, secret: str) -> str:
    """``sha256=<hex HMAC-SHA256 of the exact body bytes under the secret>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, signature: str) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return hmac.compare_digest(sign(body, secret), signature)


def resolve(host: str, port: int) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})


def _forbidden(address: str) -> str | None:
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    for attribute in ("unspecified", "loopback", "link_local", "multicast", "reserved", "private"):
        if getattr(ip, f"is_{attribute}"):
            return attribute.replace("_", "-")
    return None


def check_webhook_url(url: str, allow_hosts: Iterable[str] = (), resolver: Resolver = resolve) -> None:
    """Raise WebhookRefused unless ``url`` is http(s) to a host with only public addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookRefused(f"webhook_url must use http or https; got {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise WebhookRefused("webhook_url has no host")
    if parts.username or parts.password:
        raise WebhookRefused("webhook_url must not carry credentials")
    host = parts.hostname.lower()
    if host in {h.lower() for h in allow_hosts}:
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = resolver(host, port)
    except (OSError, ValueError) as exc:
        raise WebhookRefused(f"webhook_url host {host!r} does not resolve: {exc}") from exc
    if not addresses:
        raise WebhookRefused(f"webhook_url host {host!r} does not resolve")
    for address in addresses:
        reason = _forbidden(address)
        if reason:
            raise WebhookRefused(
                f"webhook_url host {host!r} resolves to {reason} address {address}; only public addresses "
                "are allowed (operators can allow hosts with QALIGN_WEBHOOK_ALLOW_HOSTS)"
            )


def deliver(
    url: str,
    body: bytes,
    secret: str,
    *,
    allow_hosts: Iterable[str] = (),
    attempts: int = 5,
    backoff_s: float = 0.5,
    timeout_s: float = 5.0,
    resolver: Resolver = resolve,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """POST ``body`` to ``url`` until a 2xx answer, at most ``attempts`` times; True on success."""
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(body, secret)}
    for attempt in range(1, attempts + 1):
        try:
            check_webhook_url(url, allow_hosts, resolver)
        except WebhookRefused as exc:
            log.warning("webhook refused", extra={"url": url, "reason": str(exc)})
            return False
        try:
            with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
                response = client.post(url, content=body, headers=headers)
            if 200 <= response.status_code < 300:
                return True
            outcome = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            outcome = type(exc).__name__
        log.warning("webhook attempt failed", extra={"url": url, "attempt": attempt, "outcome": outcome})
        if attempt < attempts:
            sleep(backoff_s * 2 ** (attempt - 1))
    return False


class WebhookDelivery:
    """One bounded executor for every webhook of this process: at most ``max_workers`` threads and
    ``max_pending`` queued events; the events of one URL and job go out in order.

    ``post(key, url, body)`` never blocks and never raises: a full queue drops the event with a
    warning (a receiver that keeps failing costs delivery threads their retries, nothing else).
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
    ) -> None:
        self.secret, self.allow_hosts = secret, tuple(allow_hosts)
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s
        self.max_pending, self.max_workers = max_pending, max_workers
        self._lock = threading.Lock()
        self._chains: dict[str, deque[tuple[str, bytes]]] = {}
        self._ready: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pending = 0

    def post(self, key: str, url: str, body: bytes) -> None:
        """Queue ``body`` for ``url``; events with the same ``key`` (a job id) keep their order."""
        with self._lock:
            if self._pending >= self.max_pending:
                log.warning("webhook dropped: delivery queue full", extra={"url": url})
                return
            self._pending += 1
            chain = self._chains.get(key)
            if chain is not None:  # a drain of this key is running: it will take this one too
                chain.append((url, body))
                return
            self._chains[key] = deque([(url, body)])
            if len(self._threads) < self.max_workers:  # threads start on demand, up to the bound
                # Daemon threads: a receiver that keeps failing must not hold the process at exit.
                thread = threading.Thread(target=self._work, name="qalign-webhook", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._ready.put(key)

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
                url, body = chain.popleft()
            try:
                ok = deliver(
                    url,
                    body,
                    self.secret,
                    allow_hosts=self.allow_hosts,
                    attempts=self.attempts,
                    backoff_s=self.backoff_s,
                    timeout_s=self.timeout_s,
                )
            except Exception:  # deliver never raises by design; belt and braces for the pool
                log.exception("webhook delivery crashed", extra={"url": url})
                ok = False
            finally:
                with self._lock:
                    self._pending -= 1
            if not ok:
                log.warning("webhook not delivered", extra={"url": url})

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

    Building the body presigns the result URL, which can fail (store down): that is logged and the
    event skipped, never raised into the caller (a cancel or a run must not fail because of it).
    """

    def __init__(
        self, settings: Settings, store: ObjectStore, delivery: WebhookDelivery | None = None
    ) -> None:
        self.settings, self.store = settings, store
        self.delivery = delivery
        if delivery is None and settings.webhook_secret:
            self.delivery = WebhookDelivery(
                settings.webhook_secret,
                allow_hosts=settings.allowed_webhook_hosts,
                attempts=settings.webhook_attempts,
                backoff_s=settings.webhook_backoff_s,
                timeout_s=settings.webhook_timeout_s,
                max_workers=settings.webhook_workers,
            )

    def publish(self, job: Job) -> None:
        if not job.webhook_url:
            return
        if self.delivery is None:
            log.warning("job has a webhook_url but QALIGN_WEBHOOK_SECRET is unset; not delivered")
            return
        try:
            body = job_json(job, self.store, self.settings)
        except Exception:  # e.g. presigning failed: the job's outcome stands regardless
            log.warning("could not build the webhook body", exc_info=True, extra={"job_id": job.id})
            return
        self.delivery.post(job.id, job.webhook_url, body)

    def close(self) -> None:
        if self.delivery is not None:
            self.delivery.close()
