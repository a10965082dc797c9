"""The job-store figures of /metrics, read from a real store of each backend."""

from __future__ import annotations

from datetime import timedelta

from svc_helpers import new_job

from service.http.metrics import JobStoreCollector
from service.jobs import utcnow


def gauges(stores) -> dict[str, float]:
    return {
        family.name: family.samples[0].value
        for family in JobStoreCollector(stores).collect()
        if family.type == "gauge" and family.samples and not family.samples[0].labels
    }


def test_queue_age_is_the_wait_of_the_oldest_queued_job(stores):
    assert gauges(stores)["qalign_queue_oldest_age_seconds"] == 0
    new_job(stores, created_at=utcnow() - timedelta(seconds=30))
    new_job(stores, created_at=utcnow() - timedelta(seconds=900))
    figures = gauges(stores)
    assert 900 <= figures["qalign_queue_oldest_age_seconds"] < 900 + 120
    assert figures["qalign_queue_depth"] == 2
