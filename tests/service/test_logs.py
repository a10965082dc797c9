"""Service logs are pure JSON lines: ours, Python warnings, libraries with their own handlers, and
model loading (no progress bars), each tagged with the job id inside a job."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _stderr_lines(code: str, env: dict | None = None) -> list[str]:
    base = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=REPO,
        env={**base, **(env or {})},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return [line for line in out.stderr.splitlines() if line.strip()]


def test_our_logs_warnings_and_library_logs_are_json_with_job_ids():
    code = """
import logging, warnings
from service.logs import configure_logging, job_context
import diffusers
configure_logging("INFO")
with job_context("abc123"):
    logging.getLogger("qalign.job").info("stage %s", "denoising", extra={"stage": "denoising"})
    warnings.warn("a library deprecation")
logging.getLogger("diffusers.models").warning("accelerate is not installed")
from tqdm import tqdm
for _ in tqdm(range(3)):
    pass
"""
    lines = _stderr_lines(code)
    entries = [json.loads(line) for line in lines]  # every line parses: no bars, no plain text
    by_message = {e["message"]: e for e in entries}
    stage = by_message["stage denoising"]
    assert stage["job_id"] == "abc123" and stage["level"] == "info" and stage["stage"] == "denoising"
    assert stage["logger"] == "qalign.job" and stage["ts"].endswith("Z")
    warning = next(e for e in entries if "a library deprecation" in e["message"])
    assert warning["logger"] == "py.warnings" and warning["job_id"] == "abc123"
    assert any(e["logger"] == "diffusers.models" for e in entries)


def test_model_loading_writes_only_json(tiny_model_dir):
    code = f"""
from service.logs import configure_logging
from service.jobs.runner import load_pipeline
from service.settings import Settings
configure_logging("INFO")
load_pipeline(Settings(_env_file=None, model={tiny_model_dir!r}, device="cpu"))
"""
    lines = _stderr_lines(code)
    assert lines, "model loading logs something"
    for line in lines:
        json.loads(line)
