"""The periodic thread under the heartbeat, takeover scan, expiry sweep and outbox drainer."""

from __future__ import annotations

import logging
import threading
import time

from testkit import wait_for

from service.jobs.periodic import Periodic

logger = logging.getLogger("qalign.test")


def test_a_failing_tick_is_logged_and_the_loop_goes_on(caplog):
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(time.monotonic())
        if len(ticks) <= 2:
            raise RuntimeError(f"tick {len(ticks)} broke")

    with caplog.at_level("ERROR", logger="qalign.test"):
        loop = Periodic("qalign-test", 0.01, tick, first=0, logger=logger, failure="test tick failed").start()
        try:
            wait_for(lambda: len(ticks) >= 4)
        finally:
            loop.stop()
            loop.join(30)
    failures = [r for r in caplog.records if r.getMessage() == "test tick failed"]
    assert [str(r.exc_info[1]) for r in failures if r.exc_info] == ["tick 1 broke", "tick 2 broke"]
    assert not loop._thread.is_alive()


def test_the_first_tick_waits_one_interval_unless_told_and_stop_ends_the_wait():
    """A long interval: no tick before it (the default), one at once with first=0; stop cuts the
    wait short, so join returns long before the interval would have passed."""
    ticked = threading.Event()
    waiting = Periodic("qalign-test", 3600, ticked.set, logger=logger, failure="failed").start()
    at_once = threading.Event()
    eager = Periodic("qalign-test-eager", 3600, at_once.set, first=0, logger=logger, failure="failed").start()
    assert at_once.wait(30)
    started = time.monotonic()
    for loop in (waiting, eager):
        loop.stop()
        loop.join(30)
    assert time.monotonic() - started < 30 and not ticked.is_set()
    assert not waiting._thread.is_alive() and not eager._thread.is_alive()


def test_join_waits_for_the_tick_in_progress():
    entered, release, finished = threading.Event(), threading.Event(), threading.Event()

    def tick() -> None:
        entered.set()
        release.wait(30)
        finished.set()

    loop = Periodic("qalign-test", 3600, tick, first=0, logger=logger, failure="failed").start()
    assert entered.wait(30)
    loop.stop()
    release.set()
    loop.join(30)
    assert finished.is_set() and not loop._thread.is_alive()
