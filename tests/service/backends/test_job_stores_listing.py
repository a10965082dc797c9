"""The per-owner index of both job stores (GET /jobs), and the revision every write bumps."""

from __future__ import annotations

from datetime import timedelta

from svc_helpers import new_job

from service.jobs import lifecycle, utcnow


def _page_through(stores, owner, *, status=None, limit=2):
    seen, before = [], None
    while True:
        page = stores.records.owned(owner, status=status, limit=limit, before=before)
        seen += page
        if len(page) < limit:
            return seen
        before = (page[-1].created_at.timestamp(), page[-1].id)


def test_owned_is_newest_first_owner_scoped_and_filtered(stores):
    start = utcnow()
    alice = [new_job(stores, owner="alice", created_at=start + timedelta(seconds=i)) for i in range(5)]
    new_job(stores, owner="bob", created_at=start)
    anonymous = new_job(stores, created_at=start)
    stores.records.apply(alice[1].id, lifecycle.cancel)
    stores.records.apply(alice[3].id, lifecycle.cancel)

    newest_first = [job.id for job in reversed(alice)]
    assert [j.id for j in stores.records.owned("alice", status=None, limit=10, before=None)] == newest_first
    assert [j.id for j in _page_through(stores, "alice")] == newest_first
    canceled = _page_through(stores, "alice", status="canceled", limit=1)
    assert [j.id for j in canceled] == [alice[3].id, alice[1].id]
    assert [j.id for j in stores.records.owned(None, status=None, limit=10, before=None)] == [anonymous.id]
    assert stores.records.owned("carol", status=None, limit=10, before=None) == []


def test_owned_pages_through_equal_creation_times_without_loss(stores):
    """Jobs created in the same microsecond are ordered by id and never skipped or repeated."""
    same = utcnow()
    jobs = [new_job(stores, owner="alice", created_at=same) for _ in range(7)]
    older = new_job(stores, owner="alice", created_at=same - timedelta(seconds=1))
    for limit in (1, 2, 3, 10):
        ids = [j.id for j in _page_through(stores, "alice", limit=limit)]
        assert ids == sorted((j.id for j in jobs), reverse=True) + [older.id], limit


def test_every_write_bumps_the_revision(stores):
    job = new_job(stores)
    assert job.revision == 1
    canceled = stores.records.apply(job.id, lifecycle.cancel)
    assert canceled.status == "canceled" and canceled.revision == 2
    unchanged = stores.records.apply(job.id, lambda j: None)
    assert unchanged.revision == 2 and stores.records.get(job.id).revision == 2
