"""service.usecases.erasure on both job stores (SQLite, Redis) with a local object store."""

from __future__ import annotations

from svc_helpers import claim

from service.backends.blobs import LocalBlobStore, inversion_store_key, result_key
from service.jobs import Job, JobResult, new_job_id, transitions, utcnow
from service.usecases.erasure import erase_job


def stored_job(stores, blobs, images: tuple[bytes, bytes], inversions: list[str], **fields) -> Job:
    keys = [blobs.put_input(data, "image/png") for data in images]
    job = Job(
        id=new_job_id(),
        created_at=utcnow(),
        structure_key=keys[0],
        appearance_keys=[keys[1]],
        inversion_keys=[inversion_store_key(name) for name in inversions],
        **fields,
    )
    for key in job.inversion_keys:
        blobs.put(key, b"inversion")
    stores.records.create(job)
    return job


def finish(stores, blobs, job: Job) -> Job:
    key = result_key(job.id, "image/png")
    blobs.put(key, b"result", "image/png")
    result = JobResult(key=key, content_type="image/png", width=8, height=8)
    assert claim(stores, job.id, "w") is not None

    def succeed(record: Job) -> Job | None:
        return transitions.succeed(record, results=[result], params={}, metrics={})

    return stores.records.apply(job.id, succeed)


def keys_in(blobs: LocalBlobStore) -> set[str]:
    return {key for folder in ("inputs", "results", "inversions") for key, _ in blobs.list_objects(folder)}


def test_erasure_keeps_what_another_stored_job_lists(stores, tmp_path):
    blobs = LocalBlobStore(tmp_path / "objects")
    mine = finish(stores, blobs, stored_job(stores, blobs, (b"cat", b"cup"), ["inv-cat", "inv-cup"]))
    other = stored_job(stores, blobs, (b"cat", b"tea"), ["inv-cat"])  # shares the cat and its inversion

    erased = erase_job(stores, blobs, mine.id)
    assert erased.job.id == mine.id and erased.job.status == "succeeded"
    assert (erased.results, erased.inputs, erased.inversions) == (1, 1, 1)
    assert set(erased.kept_shared) == {mine.structure_key, inversion_store_key("inv-cat")}
    assert stores.records.get(mine.id) is None and erase_job(stores, blobs, mine.id) is None
    assert keys_in(blobs) == {*other.input_keys, inversion_store_key("inv-cat")}

    assert erase_job(stores, blobs, other.id).inputs == 2
    assert keys_in(blobs) == set()


def test_erasing_a_running_job_flags_the_cancel_first(stores, tmp_path):
    blobs = LocalBlobStore(tmp_path / "objects")
    job = stored_job(stores, blobs, (b"a", b"b"), [])
    assert claim(stores, job.id, "w") is not None
    erased = erase_job(stores, blobs, job.id)
    assert erased.job.status == "running" and erased.job.cancel_requested
    assert stores.records.get(job.id) is None and keys_in(blobs) == set()
