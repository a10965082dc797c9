"""service.backends.celery_queue.broker_view reads kombu's own keys: which jobs wait in the queue, which were
delivered (and when). Checked against messages Celery itself published and a consumer took."""

from __future__ import annotations

import time

import redis

from service.backends.celery_queue import QUEUE, TASK_NAME, broker_view, make_celery
from service.settings import Settings


def test_broker_view_sees_waiting_and_delivered_messages(redis_url):
    url = redis_url.rsplit("/", 1)[0] + "/7"  # a database of its own: kombu's keys have no prefix
    client = redis.Redis.from_url(url)
    client.flushdb()
    app = make_celery(Settings(_env_file=None, redis_url=url))
    waiting, taken = "a" * 32, "b" * 32
    app.send_task(TASK_NAME, args=[taken])
    app.send_task(TASK_NAME, args=[waiting])
    assert broker_view(client).waiting == {waiting, taken}

    before = time.time()
    with app.connection_for_read() as connection:  # a consumer takes one message and dies unacked
        channel = connection.default_channel
        message = channel.basic_get(QUEUE, no_ack=False)
        assert message is not None
        view = broker_view(client)
        assert view.waiting == {waiting} and set(view.delivered) == {taken}
        assert before - 1 <= view.delivered[taken] <= time.time() + 1
        channel.qos._delivered.clear()  # leave it in `unacked`, as a SIGKILLed worker does
        channel.qos.restore_at_shutdown = False
    view = broker_view(client)
    assert view.waiting == {waiting} and set(view.delivered) == {taken}, "still held by the dead consumer"
    client.flushdb()
    client.close()
