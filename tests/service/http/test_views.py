"""queue_position and eta_s in the job objects of GET /jobs/{id} and GET /jobs."""

from __future__ import annotations

import threading

from svc_helpers import FakePipeline, wait_for
from testkit import poll, submit


def test_queue_position_and_eta_while_unfinished(make_client, small_images):
    pipeline = FakePipeline(gate=threading.Event())
    client = make_client(pipeline=pipeline)
    pipeline.gate.set()
    first = submit(client, small_images).json()
    assert first["queue_position"] == 0 and first["eta_s"] is None, "nothing has run yet: no estimate"
    done = poll(client, first["id"])
    assert done["queue_position"] is None and done["eta_s"] is None

    pipeline.gate.clear()
    pipeline.running.clear()
    running, next_up, last = (submit(client, small_images).json()["id"] for _ in range(3))
    wait_for(pipeline.running.is_set, timeout=30)
    jobs = {job_id: client.get(f"/jobs/{job_id}").json() for job_id in (running, next_up, last)}
    try:
        assert jobs[running]["status"] == "running" and jobs[running]["queue_position"] == 0
        assert jobs[next_up]["queue_position"] == 0 and jobs[last]["queue_position"] == 1
        etas = [jobs[job_id]["eta_s"] for job_id in (running, next_up, last)]
        assert all(eta is not None and eta >= 0 for eta in etas) and etas[0] <= etas[1] <= etas[2]
        listed = {job["id"]: job for job in client.get("/jobs").json()["jobs"]}
        assert [listed[i]["queue_position"] for i in (running, next_up, last)] == [0, 0, 1]
    finally:
        pipeline.gate.set()
    for job_id in (running, next_up, last):
        assert poll(client, job_id)["status"] == "succeeded"
