"""The composition root at process start: records an earlier version left in Redis are migrated
before the first request (erasure reads the listers index and never builds it)."""

from __future__ import annotations

import time

from testkit import RedisServer

from service.backends.redis_records import open_redis_stores
from service.jobs import Job, new_job_id, utcnow


def test_start_migrates_records_of_an_earlier_version(make_client, embedded_settings):
    server = RedisServer().start()  # its own: the app's key prefix is the default one
    stores = open_redis_stores(server.url, ttl=embedded_settings.job_ttl)
    records = stores.records
    try:
        job = Job(
            id=new_job_id(),
            created_at=utcnow(),
            structure_key="inputs/" + "a" * 64,
            appearance_keys=["inputs/" + "b" * 64],
        )
        # As the previous version left it: a TTL from the last write, no lister index.
        records.client.set(records._key(job.id), job.model_dump_json(), ex=600)
        records.client.zadd(records._status_key("queued"), {job.id: time.time()})

        make_client(embedded_settings.model_copy(update={"redis_url": server.url}))
        assert records.client.ttl(records._key(job.id)) == -1, "a queued job does not expire"
        assert records.listed_by_others(job.input_keys, new_job_id()) == set(job.input_keys)
    finally:
        stores.close()
        server.stop()
