"""The embedded data directory's lock: one writer process, refused with a line naming the holder."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from testkit import wait_for

from service.jobs.single_writer import DataDirLock, DataDirLocked, hold_data_dir, let_go

REPO = Path(__file__).resolve().parents[3]
HOLD = """
import sys, time
from service.jobs.single_writer import DataDirLock
DataDirLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_holder_is_refused_with_one_line_naming_the_first(tmp_path):
    first, second = DataDirLock(tmp_path), DataDirLock(tmp_path)
    first.acquire()
    with pytest.raises(DataDirLocked) as refused:
        second.acquire()
    message = str(refused.value)
    assert "\n" not in message and str(tmp_path) in message
    assert f"host {socket.gethostname()}, pid {os.getpid()}, since 20" in message
    first.release()
    second.acquire()  # free again once the holder lets go
    assert second.held
    second.release()


def test_the_lock_dies_with_its_process(tmp_path):
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, env=env)
    try:
        assert holder.stdout.readline().strip() == b"held"
        with pytest.raises(DataDirLocked, match=f"pid {holder.pid},"):
            DataDirLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    lock = DataDirLock(tmp_path)
    wait_for(lambda: _acquired(lock), timeout=10)
    lock.release()


def test_shares_within_one_process_release_with_the_last(tmp_path):
    key = hold_data_dir(tmp_path)
    assert hold_data_dir(tmp_path / ".") == key
    let_go(key)
    with pytest.raises(DataDirLocked):
        DataDirLock(tmp_path).acquire()  # another descriptor: still held by the remaining share
    let_go(key)
    lock = DataDirLock(tmp_path)
    lock.acquire()
    lock.release()


def test_a_second_embedded_app_on_the_same_directory_does_not_start(make_client, embedded_settings):
    """Another process (simulated by a separate descriptor) holds the directory: startup fails."""
    other = DataDirLock(embedded_settings.data_dir)
    other.acquire()
    try:
        with pytest.raises(DataDirLocked, match="in use by another embedded service"):
            make_client()
    finally:
        other.release()


def _acquired(lock: DataDirLock) -> bool:
    try:
        lock.acquire()
    except DataDirLocked:
        return False
    return True


def test_recovery_requeues_only_jobs_of_gone_runners(tmp_path, embedded_settings):
    from svc_helpers import claim, new_job

    from service.backends.blobs import LocalBlobStore
    from service.backends.sqlite_records import open_sqlite_stores
    from service.jobs.embedded import EmbeddedRunner

    stores = open_sqlite_stores(tmp_path / "jobs.sqlite3", ttl=3600)
    runner = EmbeddedRunner(embedded_settings, stores, LocalBlobStore(tmp_path / "objects"))
    try:
        gone = new_job(stores)
        claim(stores, gone.id, "embedded:old-host:4242")
        ours = new_job(stores)
        claim(stores, ours.id, runner.name)
        runner.recover()
        assert stores.records.get(gone.id).status == "queued"
        assert stores.records.get(ours.id).status == "running", "this process's own run is left alone"
    finally:
        stores.close()
