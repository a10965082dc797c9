"""The HTTP layer stays light and one-directional: importing it loads neither the worker nor torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def _fresh_import(module: str) -> set[str]:
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    env = {"PATH": "/usr/bin:/bin", "QALIGN_REDIS_URL": "redis://127.0.0.1:1/0"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=REPO
    )
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_importing_service_http_loads_neither_worker_nor_torch():
    for module in ("service.http", "service.http.app", "service.app"):
        loaded = _fresh_import(module)
        assert not {m for m in loaded if m == "worker" or m.startswith("worker.")}, module
        assert "torch" not in loaded, module


def test_job_runtime_imports_neither_fastapi_nor_celery():
    loaded = _fresh_import("service.jobs, service.jobs.runner, service.jobs.embedded")
    assert not {m for m in loaded if m.split(".")[0] in ("fastapi", "starlette", "celery", "worker")}


def test_no_module_of_service_imports_worker():
    offenders = [
        f"{path}:{n}"
        for path in (REPO / "service").rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if line.lstrip().startswith(("import worker", "from worker"))
    ]
    assert offenders == []


def test_the_worker_sends_no_webhooks_itself():
    """Events leave through the outbox and the API's outbox drainer: a worker process loads neither
    the webhook sender nor the HTTP layer, and the job runtime does not import the sender."""
    loaded = _fresh_import("worker.tasks")
    assert not {"service.webhooks", "service.netguard", "service.http"} & loaded
    assert "service.webhooks" not in _fresh_import("service.jobs, service.jobs.outbox, service.jobs.runner")
