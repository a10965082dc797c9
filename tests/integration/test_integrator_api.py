"""The integrator conveniences end to end, on `qalign serve` processes with the tiny model: the ready
line, the events stream, absolute links (also in webhook bodies sent by a Celery worker), the list."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import testkit
from int_helpers import (
    AWS_ENV,
    FAST,
    REPO,
    RedisServer,
    celery_worker_args,
    decode,
    free_port,
    stop_process,
    submit,
    wait_for,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def start_serve(port: int, env: dict[str, str], log) -> subprocess.Popen:
    code = f"from service.cli import serve; serve('127.0.0.1', {port})"
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=worker_env(env), stdout=log, stderr=subprocess.STDOUT
    )


def wait_ready_line(proc: subprocess.Popen, log_path, url: str, timeout: float = 240) -> None:
    def said_ready():
        assert proc.poll() is None, f"server exited; log:\n{log_path.read_text()[-4000:]}"
        return f'"message": "ready on {url}"' in log_path.read_text()

    wait_for(said_ready, timeout=timeout, interval=0.2)


def read_events(http: httpx.Client, job_id: str, headers: dict | None = None) -> list[dict]:
    """The whole events stream of a job (it ends after the terminal event), parsed."""
    events, current = [], {}
    with http.stream("GET", f"/jobs/{job_id}/events", headers=headers, timeout=300) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line:
                if "data" in current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                current[name] = value
    return events


def test_embedded_ready_line_events_links_and_list(tiny_model_dir, photo_bytes, tmp_path):
    port, log_path = free_port(), tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    env = {
        "QALIGN_MODEL": tiny_model_dir,
        "QALIGN_DEVICE": "cpu",
        "QALIGN_DATA_DIR": str(tmp_path / "data"),
        "QALIGN_PROGRESS_INTERVAL": "0.2",
    }
    environ = {k: v for k, v in os.environ.items() if k not in ("QALIGN_REDIS_URL", "QALIGN_S3_BUCKET")}
    with open(log_path, "wb") as log:
        proc = start_serve(port, {**environ, **env}, log)
    try:
        wait_ready_line(proc, log_path, base)
        with httpx.Client(base_url=base, timeout=60) as http:
            assert http.get("/readyz").status_code == 200, "the ready line comes once /readyz is 200"
            job = submit(http, photo_bytes, **FAST)
            assert job["urls"]["events"] == f"{base}/jobs/{job['id']}/events"
            events = read_events(http, job["id"])
            assert events[-1]["event"] == "succeeded", events[-1]
            assert {e["event"] for e in events[:-1]} <= {"progress"} and len(events) >= 3
            ids = [int(e["id"]) for e in events]
            assert ids == sorted(set(ids))
            done = json.loads(events[-1]["data"])
            assert done["result"]["url"] == f"{base}/jobs/{job['id']}/result"
            image = decode(http.get(done["result"]["url"]).content)
            assert image.size == (done["result"]["width"], done["result"]["height"])
            # Resuming after the first event replays nothing old.
            resumed = read_events(http, job["id"], headers={"Last-Event-ID": events[0]["id"]})
            assert [e["event"] for e in resumed] == ["succeeded"]
            listed = http.get("/jobs", params={"status": "succeeded"}).json()
            assert [j["id"] for j in listed["jobs"]] == [job["id"]] and listed["next_cursor"] is None
    finally:
        stop_process(proc, 30)
    text = log_path.read_text()
    assert text.index("Uvicorn running") < text.index(f"ready on {base}")


class Receiver:
    """Collects webhook bodies (signatures are another test's concern)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_distributed_events_and_links_in_webhook_bodies(s3_server, tiny_model_dir, photo_bytes, tmp_path):
    """A private Redis, a Celery worker and a `qalign serve` API: the links fixed at submission (from a
    trusted proxy's headers) are the links of the webhook bodies the worker sends."""
    redis = RedisServer().start()
    receiver = Receiver()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **AWS_ENV,
        "QALIGN_REDIS_URL": redis.url,
        "QALIGN_MODEL": tiny_model_dir,
        "QALIGN_DEVICE": "cpu",
        "QALIGN_S3_BUCKET": s3_server["bucket"],
        "QALIGN_S3_ENDPOINT_URL": s3_server["endpoint"],
        "QALIGN_S3_REGION": s3_server["region"],
        "QALIGN_HEARTBEAT_INTERVAL": "1",
        "QALIGN_PROGRESS_INTERVAL": "0.2",
        "QALIGN_READINESS_CACHE_S": "0",
        "QALIGN_WEBHOOK_SECRET": "whsec_" + "c2VjcmV0LWtleS1mb3ItdGVzdHM=",
        "QALIGN_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",
    }
    worker_log, api_log = tmp_path / "worker.log", tmp_path / "api.log"
    with open(worker_log, "wb") as wlog, open(api_log, "wb") as alog:
        api = start_serve(port, env, alog)
        args = celery_worker_args("links-worker")
        worker = subprocess.Popen(args, cwd=REPO, env=worker_env(env), stdout=wlog, stderr=subprocess.STDOUT)
    try:
        # Distributed: the API says ready once a worker is live (its model loaded).
        wait_ready_line(api, api_log, base)
        proxy = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "qalign.example.com"}
        with httpx.Client(base_url=base, timeout=60) as http:
            response = testkit.submit(http, photo_bytes, headers=proxy, **FAST, webhook_url=receiver.url)
            assert response.status_code == 202, response.text
            job = response.json()
            own = f"https://qalign.example.com/jobs/{job['id']}"
            links = {
                "get": own,
                "cancel": own,
                "result": f"{own}/result",
                "events": f"{own}/events",
                "results": [f"{own}/results/0"],
            }
            assert job["urls"] == links
            events = read_events(http, job["id"])
            assert events[-1]["event"] == "succeeded", (events[-1], worker_log.read_text()[-3000:])
            done = json.loads(events[-1]["data"])
            assert done["urls"] == job["urls"]
            assert done["result"]["url"].startswith(s3_server["endpoint"]), "S3: the presigned URL"
            wait_for(lambda: len(receiver.bodies) >= 2, timeout=120)
        assert [b["status"] for b in receiver.bodies] == ["running", "succeeded"]
        assert all(b["urls"] == job["urls"] for b in receiver.bodies), "the worker's bodies: the same links"
        assert receiver.bodies[-1]["result"]["url"].startswith(s3_server["endpoint"])
        assert receiver.bodies[-1]["results"] == [receiver.bodies[-1]["result"]], "webhooks carry the list"
    finally:
        stop_process(api, 30)
        stop_process(worker, 30)
        receiver.close()
        redis.stop()
