"""``qalign worker``: a Celery worker with the settings the deployment needs by default."""

from __future__ import annotations


def run_worker(argv: list[str]) -> None:
    """Start ``celery -A worker.celery_app worker``; extra Celery arguments in ``argv`` win.

    Defaults: one process, one job at a time (one GPU per worker); add workers to scale.
    """
    from worker.celery_app import QUEUE, app

    args = ["worker", "--concurrency=1", f"--queues={QUEUE}", "--loglevel=INFO"]
    given = {arg.split("=")[0] for arg in argv if arg.startswith("-")}
    args = [a for a in args if a.split("=")[0] not in given and a != "worker"]
    app.worker_main(["worker", *args, *argv])
