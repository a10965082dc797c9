"""Readiness of the embedded runner: 503 while the model loads, jobs accepted and run once it is in."""

from __future__ import annotations

import logging
import threading

import httpx
from svc_helpers import wait_for
from testkit import poll, submit

from service.cli import ReadyAnnouncer


def test_readyz_is_503_while_the_model_loads(make_server, fake_pipeline, small_images, caplog):
    loaded = threading.Event()

    def slow_factory(_settings):
        assert loaded.wait(60), "the test never let the model load"
        return fake_pipeline

    live = make_server(pipeline_factory=slow_factory)
    with caplog.at_level(logging.INFO, logger="qalign.api"):
        ReadyAnnouncer(live.server, live.app.state.services.readiness, "127.0.0.1", interval=0.05).start()
        with httpx.Client(base_url=live.url, timeout=30) as http:
            loading = http.get("/readyz")
            assert loading.status_code == 503
            workers = loading.json()["checks"]["workers"]
            assert workers == {"ok": False, "live": 0, "loading": True, "detail": "loading model"}
            assert http.get("/healthz").status_code == 200
            # A job submitted meanwhile is queued, and runs once the model is in.
            job = submit(http, small_images)
            assert job.status_code == 202, job.text
            wait_for(lambda: "not ready yet" in caplog.text, timeout=30)
            assert "ready on" not in caplog.text

            loaded.set()
            wait_for(lambda: http.get("/readyz").status_code == 200, timeout=30)
            assert poll(http, job.json()["id"])["status"] == "succeeded"
            wait_for(lambda: f"ready on {live.url}" in caplog.text, timeout=30)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ready on")]
    assert lines == [f"ready on {live.url}"], "one ready line"
    waiting = next(r.getMessage() for r in caplog.records if "not ready yet" in r.getMessage())
    assert waiting == f"listening on {live.url}; not ready yet (workers: loading model)"


def test_a_model_that_fails_to_load_is_not_ready_and_refuses_jobs(make_server, small_images):
    def broken(_settings):
        raise RuntimeError("no weights here")

    live = make_server(pipeline_factory=broken)
    with httpx.Client(base_url=live.url, timeout=30) as http:

        def load_failed():
            response = http.get("/readyz")
            return response if response.json()["checks"]["workers"]["loading"] is False else None

        failed = wait_for(load_failed)
        assert failed.status_code == 503
        assert "no weights here" in failed.json()["checks"]["workers"]["detail"]
        refused = submit(http, small_images)
        assert refused.status_code == 503 and "no weights here" in refused.json()["detail"]
