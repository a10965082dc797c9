"""A worker's heartbeat: the record readiness and job takeover read to know who is alive."""

from __future__ import annotations

import logging
import time

from service.jobs.periodic import Periodic
from service.jobs.records import JobStoreDown, WorkerRegistry
from service.settings import Settings

logger = logging.getLogger("qalign.worker")


def gpu_memory_bytes(pipeline: object) -> int | None:
    device = getattr(pipeline, "device", None)
    if device is None or getattr(device, "type", None) != "cuda":
        return None
    import torch

    return int(torch.cuda.memory_allocated(device))


def model_description(pipeline: object) -> dict[str, object] | None:
    """The loaded model's backbone, native size and size limits (``Backbone.describe``): what
    GET /readyz shows and POST /transfer checks sizes against; None for a pipeline without one."""
    backbone = getattr(pipeline, "backbone", None)
    describe = getattr(backbone, "describe", None)
    return describe() if callable(describe) else None


class Heartbeat:
    """Refreshes this worker's record in a daemon thread, also while a job runs.

    Readiness counts a worker as live while its record is fresher than QALIGN_HEARTBEAT_TTL. The
    record names ``current_job``, so a redelivered message never takes a job from a live holder.
    """

    def __init__(self, workers: WorkerRegistry, name: str, settings: Settings, pipeline: object) -> None:
        self.workers, self.name, self.settings, self.pipeline = workers, name, settings, pipeline
        self.current_job: str | None = None
        self._beats = Periodic(
            "qalign-heartbeat",
            settings.heartbeat_interval,
            self.beat,
            logger=logger,
            failure="heartbeat failed",
        )

    def info(self) -> dict[str, object]:
        return {
            "ts": time.time(),
            "model": self.settings.model,
            "backbone": model_description(self.pipeline),
            "job": self.current_job,
            "gpu_memory_bytes": gpu_memory_bytes(self.pipeline),
        }

    def start(self) -> Heartbeat:
        self.beat()
        self._beats.start()
        return self

    def beat(self) -> None:
        try:
            self.workers.heartbeat(self.name, self.info(), self.settings.heartbeat_ttl)
        except JobStoreDown:
            logger.warning("heartbeat failed: job store unreachable")

    def stop(self) -> None:
        self._beats.stop()
