"""Webhooks from a real Celery worker (distributed mode, Redis job records): signed the Standard
Webhooks way, the events filter honoured, and an undelivered event recorded on the Redis record and
counted in the API's metrics."""

from __future__ import annotations

import httpx
import pytest
from int_helpers import FAST, WEBHOOK_SECRET, poll, submit, wait_for
from net_helpers import LocalServer, Reply

from qalign_client.webhooks import verify

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


def test_worker_sends_only_the_chosen_event_signed(distributed_client, photo_bytes):
    receiver = LocalServer(lambda seen, handler: Reply(204))
    try:
        hook = {"webhook_url": receiver.url(path="/hook"), "webhook_events_filter": "completed"}
        job = submit(distributed_client, photo_bytes, **hook, **FAST)
        assert poll(distributed_client, job["id"])["status"] == "succeeded"
        wait_for(lambda: receiver.seen, timeout=60)
        (seen,) = receiver.seen
        headers = httpx.Headers(seen.headers)
        delivered = verify(WEBHOOK_SECRET, headers, seen.body)  # a valid Standard Webhooks signature
        assert delivered.id == job["id"]
        assert headers["webhook-id"] == f"job_{job['id']}_succeeded"
        record = distributed_client.app.state.services.stores.records.get(job["id"])
        assert record.webhook_events == ["completed"] and record.webhook_undelivered == []
    finally:
        receiver.close()


def undelivered_failed(client) -> float:
    """The API's qalign_webhooks_undelivered_total{reason="failed"} (the whole deployment's count)."""
    line = 'qalign_webhooks_undelivered_total{reason="failed"} '
    (value,) = [
        row.removeprefix(line) for row in client.get("/metrics").text.splitlines() if row.startswith(line)
    ]
    return float(value)


def test_worker_records_an_undelivered_event_on_the_job(distributed_client, photo_bytes):
    receiver = LocalServer(lambda seen, handler: Reply(503))
    before = undelivered_failed(distributed_client)
    try:
        job = submit(distributed_client, photo_bytes, seed=11, webhook_url=receiver.url(path="/hook"), **FAST)
        assert poll(distributed_client, job["id"])["status"] == "succeeded"
        records = distributed_client.app.state.services.stores.records
        wait_for(lambda: len(records.get(job["id"]).webhook_undelivered) == 2, timeout=60)
        entries = records.get(job["id"]).webhook_undelivered
        assert [e.status for e in entries] == ["running", "succeeded"]
        assert all(e.reason == "failed" and "HTTP 503" in e.detail for e in entries)
        assert len(receiver.seen) == 4, "2 attempts per event (QALIGN_WEBHOOK_ATTEMPTS=2)"
        assert undelivered_failed(distributed_client) == before + 2, "the worker's give-ups reach /metrics"
    finally:
        receiver.close()
