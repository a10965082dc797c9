"""The in-process worker of the embedded mode: one thread runs queued jobs one at a time.

Jobs survive restarts because the queue is the SQLite job table, not this thread's memory: on
start, the runner takes the data directory's lock (service.jobs.single_writer: a second process on
the same directory is refused), so every job left ``running`` by another process belongs to a
process that is gone: those are re-queued (or failed once out of attempts) and every queued job is
scheduled again, oldest first. On a clean stop the running job is interrupted at its next step and
put back in the queue, not lost and not marked canceled.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path

from service.backends.blobs import BlobStore
from service.jobs import lifecycle, model
from service.jobs.heartbeat import Heartbeat
from service.jobs.records import JobStores
from service.jobs.runner import JobContext, PipelineFactory, TransferPipeline, execute_job, load_pipeline
from service.jobs.single_writer import hold_data_dir, let_go
from service.logs import job_context
from service.settings import Settings

logger = logging.getLogger("qalign.embedded")


class EmbeddedRunner:
    def __init__(
        self,
        settings: Settings,
        stores: JobStores,
        blobs: BlobStore,
        pipeline_factory: PipelineFactory = load_pipeline,
    ) -> None:
        self.settings, self.stores, self.blobs = settings, stores, blobs
        self.pipeline_factory = pipeline_factory
        self.name = f"embedded:{model.worker_name()}"
        self.pipeline: TransferPipeline | None = None
        self.load_error: str | None = None
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat: Heartbeat | None = None
        self._data_dir_key: Path | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Take the data directory (DataDirLocked when another process has it), recover, run."""
        self._data_dir_key = hold_data_dir(self.settings.data_dir)
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="qalign-embedded-worker", daemon=True)
        self._thread.start()

    def recover(self) -> None:
        """Requeue jobs a gone process left running, then schedule every queued job again.

        Only called with the data directory's lock held: no other process can be running a job of
        this directory, so a ``running`` record names a gone process, unless it names this one (a
        runner of this process puts its job back itself when it stops).
        """
        change = lifecycle.recover(self.name, self.settings.max_attempts)
        for job_id in self.stores.records.ids_by_status("running"):
            with job_context(job_id):
                job = self.stores.records.apply(job_id, change)
                logger.info("recovered a job left running: now %s", job.status if job else "gone")
        for job_id in self.stores.records.ids_by_status("queued"):
            self._queue.put(job_id)

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            # A model still loading cannot be interrupted; the daemon thread ends with the process.
            self._thread.join(timeout if self.pipeline is not None else 1.0)
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._data_dir_key is not None:
            let_go(self._data_dir_key)
            self._data_dir_key = None

    def submit(self, job_id: str) -> None:
        self._queue.put(job_id)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.load_error is None

    @property
    def loading(self) -> bool:
        """The thread runs but the model is not loaded yet (nor failed to load)."""
        return self.alive and self.pipeline is None

    @property
    def state(self) -> str:
        if self.load_error:
            return f"model failed to load: {self.load_error}"
        if not (self._thread and self._thread.is_alive()):
            return "stopped"
        return "ready" if self.pipeline is not None else "loading model"

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        try:
            self.pipeline = self.pipeline_factory(self.settings)
        except Exception as exc:  # reported by readiness; queued jobs are failed with the reason
            self.load_error = str(exc)
            logger.exception("embedded worker could not load the model")
        ctx = None
        if self.pipeline is not None:
            self._heartbeat = Heartbeat(self.stores.workers, self.name, self.settings, self.pipeline).start()
            ctx = JobContext(
                self.stores,
                self.blobs,
                self.settings,
                self.pipeline,
                worker=self.name,
                interrupted=self._stop.is_set,
            )
        while not self._stop.is_set():
            job_id = self._queue.get()
            if job_id is None or self._stop.is_set():
                continue
            self._run_one(ctx, job_id)

    def _run_one(self, ctx: JobContext | None, job_id: str) -> None:
        try:
            if ctx is None:
                self._fail_unloaded(job_id)
                return
            if self._heartbeat is not None:
                self._heartbeat.current_job = job_id
            execute_job(ctx, job_id)
        except Exception:
            logger.exception("embedded worker error", extra={"job_id": job_id})
        finally:
            if self._heartbeat is not None:
                self._heartbeat.current_job = None

    def _fail_unloaded(self, job_id: str) -> None:
        self.stores.records.apply(job_id, lifecycle.model_unavailable(self.load_error or "unknown error"))
