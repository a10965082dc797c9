"""The Celery side both processes share: the app factory, the task name and the queue name.

The API publishes job ids with it and the worker consumes them; neither imports the other.
Importing this module is cheap (no torch, no connection).
"""

from __future__ import annotations

import base64
import json
from typing import cast

import redis
from celery import Celery

from service.jobs.lifecycle import BrokerView
from service.settings import Settings

TASK_NAME = "qalign.transfer"
QUEUE = "qalign"
#: How long a prefork child may take to load the model (a first download included) before it is up.
MODEL_LOAD_TIMEOUT_S = 1800.0


def make_celery(settings: Settings | None = None, *, imports: tuple[str, ...] = ()) -> Celery:
    """The configured app; ``imports`` names the task modules (the worker passes worker.tasks).

    Over 50 lines on purpose: it is one settings table, each entry with the reason it is set,
    kept together so the delivery guarantees can be read in one place.
    """
    settings = settings or Settings()
    broker = settings.redis_url or "redis://127.0.0.1:6379/0"
    celery = Celery("qalign", broker=broker, set_as_current=False)
    celery.conf.update(
        # Messages carry a job id only; JSON so nothing executable crosses the broker.
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,  # the job record in Redis is the result
        task_default_queue=QUEUE,
        task_routes={TASK_NAME: {"queue": QUEUE}},
        # One job at a time per GPU process; a job is acknowledged only after it ran, and requeued
        # when the process running it dies.
        worker_prefetch_multiplier=1,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_concurrency=1,
        # Prefork children load the model before they report "up" (worker_process_init); Celery's 4 s
        # default would kill every child still loading (a real model takes far longer) and respawn it.
        worker_proc_alive_timeout=MODEL_LOAD_TIMEOUT_S,
        # A run is stopped (SoftTimeLimitExceeded: the job fails with error time_limit) after
        # JOB_TIME_LIMIT, and its process killed after the hard limit. Prefork pool only: solo and
        # threads pools cannot enforce time limits.
        task_soft_time_limit=settings.job_time_limit,
        task_time_limit=settings.job_hard_time_limit,
        broker_transport_options={
            # Above the hard time limit (Settings checks it), or a job still running would be delivered
            # to a second worker. A worker that died (SIGKILL, lost host) leaves its message unacked;
            # any live worker puts it back in the queue once it is this old.
            "visibility_timeout": settings.broker_visibility_timeout,
            # Scan for such messages every REDELIVERY_CHECK_INTERVAL s (kombu's default is ~100 s).
            "unacked_restore_interval": settings.redelivery_check_interval,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
        },
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 1,
        },
        # Our JSON logging is configured on the setup_logging signal (worker.tasks).
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        imports=imports,
    )
    return celery


#: kombu's Redis transport keeps each priority level of a queue in its own list: the plain name for
#: the default level, ``name\x06\x16N`` for the others (kombu.transport.redis, priority_steps).
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_LEVELS = (3, 6, 9)
#: kombu's keys for delivered, unacknowledged messages: tag -> [message, exchange, routing key], and
#: tag -> delivery time (epoch seconds).
_UNACKED, _UNACKED_INDEX = "unacked", "unacked_index"


def _job_id_of(raw: str | bytes) -> str | None:
    """The job id a raw kombu message carries (None for anything else): args[0] of our task."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # an unacked entry: [message, exchange, routing key]
            message = message[0]
        if message.get("headers", {}).get("task") != TASK_NAME:
            return None
        body: str | bytes = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None


def broker_view(client: redis.Redis) -> BrokerView:
    """Which jobs have a message in the broker: waiting in the queue, or delivered and unacknowledged
    (with the delivery time). The queue is read before the delivered messages: a message moves from the
    first to the second, so it is never missed in between (only seen twice)."""
    pipe = client.pipeline(transaction=False)
    for key in (QUEUE, *(f"{QUEUE}{_PRIORITY_SEPARATOR}{level}" for level in _PRIORITY_LEVELS)):
        pipe.lrange(key, 0, -1)
    listed = pipe.execute()
    held = cast(dict[bytes, bytes], client.hgetall(_UNACKED))
    scored = cast(list[tuple[bytes, float]], client.zrange(_UNACKED_INDEX, 0, -1, withscores=True))
    since = {tag: float(score) for tag, score in scored}
    waiting = {job for raws in listed for raw in raws if (job := _job_id_of(raw)) is not None}
    delivered: dict[str, float] = {}
    for tag, raw in held.items():
        job = _job_id_of(raw)
        if job is not None:
            delivered[job] = max(delivered.get(job, 0.0), float(since.get(tag, 0.0)))
    return BrokerView(waiting=frozenset(waiting), delivered=delivered)
