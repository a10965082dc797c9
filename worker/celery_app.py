"""The Celery application of the GPU worker (``celery -A worker.celery_app worker``).

Configured in one place, service.queue, which the API also uses to publish; this module adds the
task module. Importing it is cheap (no torch, no connection).
"""

from __future__ import annotations

from service.queue import QUEUE, TASK_NAME, make_celery

__all__ = ["QUEUE", "TASK_NAME", "app", "make_celery"]

app = make_celery(imports=("worker.tasks",))
