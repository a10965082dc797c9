"""Job events are durable: the embedded service is killed (SIGKILL) while a terminal webhook is
still undelivered, and the event goes out after the next start, with the same webhook-id."""

from __future__ import annotations

import subprocess
import threading

import httpx
import pytest
from int_helpers import (
    FAST,
    REPO,
    free_port,
    poll,
    serve_command,
    serve_env,
    service_ready,
    stop_process,
    submit,
    wait_for,
)
from net_helpers import LocalServer, Reply

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

SECRET = "durable-hook-secret"


def test_an_event_held_by_a_killed_process_is_delivered_after_restart(tiny_model_dir, photo_bytes, tmp_path):
    answering = threading.Event()  # the receiver fails every POST until set
    receiver = LocalServer(lambda seen, handler: Reply(204 if answering.is_set() else 503))
    data_dir, port = tmp_path / "data", free_port()
    env = {
        **serve_env(data_dir, tiny_model_dir),
        "QALIGN_WEBHOOK_SECRET": SECRET,
        "QALIGN_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
        "QALIGN_WEBHOOK_ATTEMPTS": "20",  # retried for minutes: the event stays in hand until the kill
        "QALIGN_WEBHOOK_BACKOFF_S": "1",
    }
    hook = {"webhook_url": receiver.url(path="/hook"), "webhook_events_filter": "completed"}
    processes = []

    def start(log_name: str) -> subprocess.Popen:
        with open(tmp_path / log_name, "wb") as log:
            process = subprocess.Popen(
                serve_command(port), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        processes.append(process)
        return process

    try:
        first = start("first.log")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_for(lambda: service_ready(client), timeout=180)
            job = submit(client, photo_bytes, **FAST, **hook)
            assert poll(client, job["id"], timeout=300)["status"] == "succeeded"
            wait_for(lambda: len(receiver.seen) >= 2, timeout=60)  # failed at least twice: in hand
        first.kill()
        first.wait(30)
        tried = len(receiver.seen)
        answering.set()
        start("second.log")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_for(lambda: len(receiver.seen) > tried, timeout=180)
            wait_for(lambda: service_ready(client), timeout=180)
            record = client.get(f"/jobs/{job['id']}").json()
        ids = {seen.headers["webhook-id"] for seen in receiver.seen}
        assert ids == {f"job_{job['id']}_succeeded"}, "one event, the same id on every attempt"
        assert record["status"] == "succeeded"
    finally:
        for process in processes:
            stop_process(process, 30)
        receiver.close()
