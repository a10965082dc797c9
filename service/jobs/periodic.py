"""Work repeated in a daemon thread until stopped: the heartbeat, the takeover scan, the expiry sweep
and the outbox drainer's polling all run on ``Periodic``, so each says only what it does and how
often, and none can die of an exception (the next tick tries again).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Self


class Periodic:
    """``tick()`` every ``interval`` seconds in a daemon thread named ``name``, the first time
    ``first`` seconds after ``start`` (default: one interval; 0: at once), until ``stop``.

    An exception from ``tick`` is logged as ``failure`` on ``logger`` and the loop goes on. A tick
    in progress is never cut short: ``stop`` ends the wait, and ``join`` waits for that tick.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        tick: Callable[[], object],
        *,
        logger: logging.Logger,
        failure: str,
        first: float | None = None,
    ) -> None:
        self.name, self.interval, self.tick = name, interval, tick
        self.logger, self.failure = logger, failure
        self.first = interval if first is None else first
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        delay = self.first
        while not self._stop.wait(delay):
            try:
                self.tick()
            except Exception:  # a periodic task must never die: the next tick tries again
                self.logger.exception(self.failure)
            delay = self.interval
