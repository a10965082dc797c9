"""Expiry: records, results and unreferenced inputs past their time."""

from __future__ import annotations

import os
import time

from service.backends.blobs import LocalBlobStore, input_key
from service.backends.sqlite_records import open_sqlite_stores
from service.jobs import Job, JobResult, new_job_id, utcnow


def test_sweep_removes_expired_records_results_and_unreferenced_inputs(tmp_path, embedded_settings):
    from service.jobs.cleanup import sweep

    settings = embedded_settings.model_copy(update={"job_ttl": 3600})
    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    blobs = LocalBlobStore(tmp_path / "objects")
    old = time.time() - 7200
    kept_input, shared_input, orphan_input = b"kept", b"shared", b"orphan"
    for data in (kept_input, shared_input, orphan_input):
        blobs.put_input(data, "image/png")
        os.utime(blobs.local_path(input_key(data)), (old, old))

    def job(structure: bytes, created: float, finished: bool) -> Job:
        record = Job(
            id=new_job_id(),
            created_at=utcnow().fromtimestamp(created, tz=utcnow().tzinfo),
            structure_key=input_key(structure),
            appearance_keys=[input_key(shared_input)],
            status="succeeded" if finished else "queued",
            finished_at=utcnow().fromtimestamp(created, tz=utcnow().tzinfo) if finished else None,
            results=[JobResult(key=f"results/{'0' * 32}.png", content_type="image/png", width=1, height=1)],
        )
        stores.records.create(record)
        blobs.put(f"results/{record.id}.png", b"png")
        os.utime(blobs.local_path(f"results/{record.id}.png"), (created, created))
        return record

    expired, live = job(orphan_input, old, True), job(kept_input, time.time(), True)
    blobs.put("results/" + "f" * 32 + ".png", b"no record")
    os.utime(blobs.local_path("results/" + "f" * 32 + ".png"), (old, old))
    tmp = tmp_path / "objects" / "inputs" / ".tmp-crashed"
    tmp.write_bytes(b"partial")
    os.utime(tmp, (old, old))

    counts = sweep(stores, blobs, settings)
    assert counts == {"records": 1, "results": 2, "inputs": 1, "inversions": 0, "temp_files": 1}
    assert stores.records.get(expired.id) is None and stores.records.get(live.id) is not None
    assert blobs.age(f"results/{expired.id}.png") is None and blobs.age(f"results/{live.id}.png") is not None
    assert blobs.age(input_key(orphan_input)) is None
    assert blobs.age(input_key(kept_input)) is not None and blobs.age(input_key(shared_input)) is not None
    assert not tmp.exists()
    # Reusing an old input refreshes it, so an expiry sweep right after cannot take it from a new job.
    # (A store that saw it fresh moments ago trusts that for a while; a later one looks again.)
    os.utime(blobs.local_path(input_key(kept_input)), (old, old))
    LocalBlobStore(tmp_path / "objects").put_input(kept_input, "image/png")
    assert time.time() - blobs.local_path(input_key(kept_input)).stat().st_mtime < 60


def test_sweep_removes_a_superseded_attempts_late_result_but_keeps_the_named_one(tmp_path, embedded_settings):
    """After a takeover each attempt uploads its own object; the one the record does not name goes."""
    from service.backends.blobs import result_key
    from service.jobs.cleanup import sweep

    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    blobs = LocalBlobStore(tmp_path / "objects")
    job_id = new_job_id()
    named, stray = result_key(job_id, "image/png", attempt=2), result_key(job_id, "image/png")
    assert (named, stray) == (f"results/{job_id}-a2.png", f"results/{job_id}.png")
    stores.records.create(
        Job(
            id=job_id, created_at=utcnow(), structure_key=input_key(b"s"), appearance_keys=[input_key(b"a")],
            status="succeeded", finished_at=utcnow(), attempts=2,
            results=[JobResult(key=named, content_type="image/png", width=1, height=1)],
        )
    )  # fmt: skip
    old = time.time() - 7200
    for key in (named, stray):
        blobs.put(key, b"png")
        os.utime(blobs.local_path(key), (old, old))
    assert sweep(stores, blobs, embedded_settings)["results"] == 1
    assert blobs.age(named) is not None and blobs.age(stray) is None
    stores.close()


def test_sweep_keeps_every_result_of_a_multi_appearance_job(tmp_path, embedded_settings):
    """Each of the record's results stays; a superseded attempt's late upload of image 1 goes."""
    from service.backends.blobs import result_key
    from service.jobs.cleanup import sweep

    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    blobs = LocalBlobStore(tmp_path / "objects")
    job_id = new_job_id()
    named = [result_key(job_id, "image/png", attempt=2, index=k) for k in range(3)]
    stray = result_key(job_id, "image/png", attempt=1, index=1)
    assert named[1] == f"results/{job_id}-r1-a2.png" and stray == f"results/{job_id}-r1.png"
    stores.records.create(
        Job(
            id=job_id, created_at=utcnow(), structure_key=input_key(b"s"),
            appearance_keys=[input_key(b"a"), input_key(b"b"), input_key(b"c")],
            status="succeeded", finished_at=utcnow(), attempts=2,
            results=[JobResult(key=key, content_type="image/png", width=1, height=1) for key in named],
        )
    )  # fmt: skip
    old = time.time() - 7200
    for key in (*named, stray):
        blobs.put(key, b"png")
        os.utime(blobs.local_path(key), (old, old))
    assert sweep(stores, blobs, embedded_settings)["results"] == 1
    assert all(blobs.age(key) is not None for key in named) and blobs.age(stray) is None
    stores.close()


def test_sweep_migrates_records_of_an_earlier_version_first(tmp_path, embedded_settings, redis_url):
    """Migration the API start could not run (Redis away then) is done by the next sweep."""
    from service.backends.redis_records import open_redis_stores
    from service.jobs.cleanup import sweep

    stores = open_redis_stores(redis_url, ttl=3600, prefix=f"t{new_job_id()}:")
    records = stores.records
    try:
        job = Job(
            id=new_job_id(),
            created_at=utcnow(),
            structure_key=input_key(b"s"),
            appearance_keys=[input_key(b"a")],
        )
        # As the previous version left it: a TTL from the last write, no lister index.
        records.client.set(records._key(job.id), job.model_dump_json(), ex=600)
        records.client.zadd(records._status_key("queued"), {job.id: time.time()})
        sweep(stores, LocalBlobStore(tmp_path / "objects"), embedded_settings)
        assert records.client.ttl(records._key(job.id)) == -1
        assert records.listed_by_others(job.input_keys, new_job_id()) == set(job.input_keys)
    finally:
        stores.close()
