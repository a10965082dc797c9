"""What a poll of an unfinished job costs the job store, as the queue grows.

``python -m bench.queue_position [--depths 100,1000,10000] [--polls 300]``

Starts a private redis-server on a free loopback port (stopped at the end), fills the queued index
with DEPTH records, and times the queue read of ``GET /jobs/{id}`` for a job at the back of the
queue: ``QueueSnapshot.read`` (a ZRANK per shown job, the live workers from their name set) against
the plain reference of the same reads done the way the API did before: the whole queued index
fetched and searched (``ids_by_status`` + ``list.index``) and the heartbeat keys found by a SCAN of
the keyspace, which holds every job record. Prints the median per poll of each and their ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import time

import redis

from bench.load_api import free_port, wait_until
from service.backends.redis_records import open_redis_stores
from service.jobs import Job, new_job_id, utcnow
from service.jobs.estimates import QueueSnapshot


def median_ms(fn, polls: int) -> float:
    times = []
    for _ in range(polls):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(url: str, depth: int, polls: int) -> tuple[float, float]:
    stores = open_redis_stores(url, ttl=3600, prefix=f"bench{new_job_id()}:")
    records = stores.records
    jobs = [
        Job(id=new_job_id(), created_at=utcnow(), structure_key="inputs/a", appearance_keys=["inputs/b"])
        for _ in range(depth)
    ]
    for job in jobs:
        records.create(job)
    last = jobs[-1]

    def whole_index() -> int:  # the plain reference: the same reads, by the whole index and a SCAN
        queued = records.ids_by_status("queued")
        records.get_many(records.ids_by_status("running"))
        stores.stages.snapshot()
        beats = list(records.client.scan_iter(match=f"{records.conn.prefix}worker:*", count=100))
        records.client.mget(beats) if beats else []
        return queued.index(last.id)

    def snapshot() -> int | None:
        return QueueSnapshot.read(stores, [last]).position(last)

    assert whole_index() == snapshot() == depth - 1
    reference, current = median_ms(whole_index, polls), median_ms(snapshot, polls)
    stores.close()
    return reference, current


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.queue_position", description=__doc__)
    parser.add_argument("--depths", default="100,1000,10000")
    parser.add_argument("--polls", type=int, default=300)
    args = parser.parse_args()
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not on PATH")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        wait_until(lambda: redis.Redis.from_url(url).ping(), 30, "redis-server")
        print("| queued jobs | reference (index + SCAN), ms/poll | QueueSnapshot.read, ms/poll | ratio |")
        print("|---|---|---|---|")
        for depth in (int(d) for d in args.depths.split(",")):
            reference, current = measure(url, depth, args.polls)
            print(f"| {depth} | {reference:.3f} | {current:.3f} | {reference / current:.1f}x |")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


if __name__ == "__main__":
    main()
