"""Readiness: cached, and computed once for a burst of concurrent requests."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from service.usecases.admission import Readiness


class SlowJobQueue:
    def __init__(self) -> None:
        self.checks = 0

    def check(self) -> dict[str, dict]:
        self.checks += 1
        time.sleep(0.05)  # a broker round trip; the burst must wait for this one check, not repeat it
        return {"broker": {"ok": True}}


class Up:
    def ping(self) -> None:
        return None

    def live(self) -> dict[str, dict[str, object]]:
        return {}


def test_a_burst_waits_for_one_check(embedded_settings):
    settings = embedded_settings.model_copy(update={"readiness_cache_s": 60.0})
    stores = type("Stores", (), {"records": Up(), "workers": Up()})()
    queue = SlowJobQueue()
    readiness = Readiness(settings, stores, Up(), queue)
    barrier = threading.Barrier(8)

    def request(_):
        barrier.wait()
        return readiness.verdict()

    with ThreadPoolExecutor(8) as pool:
        verdicts = list(pool.map(request, range(8)))
    assert all(v["ready"] for v in verdicts) and queue.checks == 1
    readiness.verdict(fresh=True)
    assert queue.checks == 2, "fresh=True (the ready announcer) skips the cache"
