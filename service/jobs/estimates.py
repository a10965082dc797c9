"""Where an unfinished job stands: its place in the queue and an estimate of when it ends.

Estimated from the stage statistics every worker records (mean duration of each stage over the jobs
that ran), scaled by the job's size in UNet rows (``rows_factor``): a rough figure, null while no job
has run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from service.jobs.model import Job
from service.jobs.records import JobStores
from service.jobs.transitions import STAGE_SPANS

#: The stages of one run, in order (the keys of the progress bar).
RUN_STAGES: tuple[str, ...] = tuple(STAGE_SPANS)


def rows_factor(appearances: int) -> float:
    """How much longer a job with ``appearances`` images runs than a single pair, taken as its UNet
    rows per aligned denoising step over a single pair's: (3N + 1) / 4.

    Each aligned step runs the N outputs, the N appearances and the one shared structure row, plus
    the N outputs again for swap guidance: 3N + 1 rows, against 4 for one pair. Denoising dominates
    a run (inverting N + 1 images grows about as fast), so the whole run is scaled by this ratio.
    The stage means it multiplies are averaged over every run whatever its N: while most jobs carry
    one appearance they are a single pair's cost, and with many multi-appearance jobs the estimate
    leans high for single pairs and low for large N.
    """
    return (3 * max(appearances, 1) + 1) / 4


@dataclass(frozen=True)
class QueueSnapshot:
    """The queue as read once (per request) for the jobs a response shows: how many jobs are
    queued ahead of each of its queued ones, the running jobs, the mean duration of each stage and
    the number of live workers. Polls come by the thousand: nothing here grows with the queue."""

    ahead: dict[str, int]
    running: list[Job]
    stage_means: dict[str, float]
    workers: int
    #: Workers with a live heartbeat (``workers`` is at least 1 for the estimate); 0 = scaled to zero.
    live: int = 1

    @classmethod
    def read(cls, stores: JobStores, jobs: Iterable[Job]) -> QueueSnapshot:
        records = stores.records
        ahead = records.ranks("queued", [job.id for job in jobs if job.status == "queued"])
        running = records.get_many(records.ids_by_status("running"))  # at most one per worker
        means = {stage: s["sum"] / s["count"] for stage, s in stores.stages.snapshot().items() if s["count"]}
        live = len(stores.workers.live())
        return cls(ahead, running, means, max(live, 1), live)

    def waiting_for(self, job: Job) -> str | None:
        """ "worker" for a queued job while no worker is live: it starts once one is (scale from zero)."""
        return "worker" if job.status == "queued" and self.live == 0 else None

    def position(self, job: Job) -> int | None:
        """Jobs queued ahead of this one; 0 when it runs or runs next; None once finished."""
        if job.status == "running":
            return 0
        if job.status != "queued":
            return None
        return self.ahead.get(job.id, 0)  # not queued any more when the queue was read: it runs

    def job_s(self) -> float | None:
        """Mean duration of one whole run; None until a job has been denoised."""
        if "denoising" not in self.stage_means:
            return None
        return sum(self.stage_means.get(stage, 0.0) for stage in RUN_STAGES)

    def remaining_s(self, job: Job) -> float | None:
        """Seconds a running job still needs: the rest of its stage and the stages after it, scaled
        by its rows (``rows_factor``)."""
        per_job = self.job_s()
        if per_job is None:
            return None
        factor = rows_factor(len(job.appearance_keys))
        if job.stage not in STAGE_SPANS:
            return per_job * factor
        low, high = STAGE_SPANS[job.stage]
        done = min(max((job.progress - low) / (high - low), 0.0), 1.0)
        later = RUN_STAGES[RUN_STAGES.index(job.stage) + 1 :]
        left = self.stage_means.get(job.stage, 0.0) * (1.0 - done)
        return (left + sum(self.stage_means.get(stage, 0.0) for stage in later)) * factor

    def eta_s(self, job: Job) -> float | None:
        """Seconds until the job should end: for a queued job, the work ahead of it shared by the
        live workers plus its own run (scaled by its rows); None when finished or nothing has run
        yet. Queued jobs ahead count as single pairs: their records are not read (see the class)."""
        per_job = self.job_s()
        if per_job is None or job.status not in ("queued", "running"):
            return None
        if job.status == "running":
            return round(self.remaining_s(job) or 0.0, 1)
        ahead = sum(self.remaining_s(other) or 0.0 for other in self.running)
        ahead += (self.position(job) or 0) * per_job
        return round(ahead / self.workers + per_job * rows_factor(len(job.appearance_keys)), 1)
