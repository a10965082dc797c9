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
import socket
import time
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import httpx

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


class EventSender:
    """Delivers one job's events in order from a daemon thread, so the job never waits for a receiver.

    ``send`` queues a body; ``close`` lets the thread end after the queued bodies. A receiver that
    keeps failing costs this thread its retries and nothing else.
    """

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        allow_hosts: Iterable[str] = (),
        attempts: int = 5,
        backoff_s: float = 0.5,
        timeout_s: float = 5.0,
    ) -> None:
        import queue
        import threading

        self.url, self.secret, self.allow_hosts = url, secret, tuple(allow_hosts)
        self.attempts, self.backoff_s, self.timeout_s = attempts, backoff_s, timeout_s
        self.delivered: list[bool] = []
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="qalign-webhook", daemon=True)
        self._thread.start()

    def send(self, body: bytes) -> None:
        self._queue.put(body)

    def close(self) -> None:
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _loop(self) -> None:
        while (body := self._queue.get()) is not None:
            try:
                ok = deliver(
                    self.url,
                    body,
                    self.secret,
                    allow_hosts=self.allow_hosts,
                    attempts=self.attempts,
                    backoff_s=self.backoff_s,
                    timeout_s=self.timeout_s,
                )
            except Exception:  # deliver never raises by design; belt and braces for the thread
                log.exception("webhook delivery crashed", extra={"url": self.url})
                ok = False
            self.delivered.append(ok)
            if not ok:
                log.warning("webhook not delivered", extra={"url": self.url})
