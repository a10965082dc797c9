"""Embedded single writer with two real processes: ``qalign serve`` twice on one data directory."""

from __future__ import annotations

import json
import subprocess

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

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


def test_a_second_process_on_the_same_data_dir_refuses_and_the_first_job_succeeds(
    tiny_model_dir, photo_bytes, tmp_path
):
    data_dir, log_path, port = tmp_path / "data", tmp_path / "first.log", free_port()
    env = serve_env(data_dir, tiny_model_dir)
    with open(log_path, "wb") as log:
        first = subprocess.Popen(serve_command(port), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_for(lambda: service_ready(client), timeout=120)
            job = submit(client, photo_bytes, **FAST)
            # Running (the tiny model on a busy machine runs this for many seconds; the second
            # process needs only its imports to give up, so it very likely overlaps the run).
            assert poll(client, job["id"], statuses=("running", "succeeded", "failed"))["status"] == "running"

            # The same data directory and the same port: the lock refuses it before any bind.
            second = subprocess.run(
                serve_command(port), cwd=REPO, env=env, capture_output=True, timeout=120, check=False
            )
            assert second.returncode == 1, second.stderr.decode()[-2000:]
            lines = [line for line in second.stderr.decode().splitlines() if line.strip()]
            assert len(lines) == 1, lines
            entry = json.loads(lines[0])
            assert entry["level"] == "error"
            message = entry["message"]
            assert "in use by another embedded service" in message and str(data_dir) in message
            assert f"pid {first.pid}," in message and "since 20" in message and "host " in message

            done = poll(client, job["id"], timeout=300)
            assert done["status"] == "succeeded", (done, log_path.read_text()[-3000:])
            assert first.poll() is None, "the first process keeps serving"
    finally:
        stop_process(first, 30)
    assert "recovered job left running" not in log_path.read_text()
