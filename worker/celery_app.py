"""The Celery application of the GPU worker (``celery -A worker.celery_app worker``).

Configured in one place, service.queue, which the API also uses to publish; this module adds the
task module. Importing it is cheap (no torch, no connection).
"""

from __future__ import annotations

from service.logs import configure_logging
from service.queue import QUEUE, TASK_NAME, make_celery
from service.settings import Settings

__all__ = ["QUEUE", "TASK_NAME", "app", "make_celery"]

_settings = Settings()
# JSON from the first line: Celery warns (e.g. about running as root) before its logging signals fire.
configure_logging(_settings.log_level)
app = make_celery(_settings, imports=("worker.tasks",))
