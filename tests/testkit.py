"""Helpers every test folder shares (tests/ is on sys.path through its conftest): ports, waiting,
the HTTP helpers (submit, poll, assert_problem), a private redis-server, process stopping, a
fake clock for TTLs, and the skip-or-fail rule for a missing tool."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import NoReturn

import pytest

PROBLEM_JSON = "application/problem+json"
TERMINAL = ("succeeded", "failed", "canceled")


def free_port() -> int:
    """A free TCP port on loopback (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy (returned) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


#: Set by .ci/run: there a test whose tool is missing (Chromium, redis-server, the Kubernetes
#: validators, network namespaces) fails instead of skipping.
REQUIRE_TOOLS = "QALIGN_REQUIRE_TOOLS"


def tool_missing(reason: str, required_by: str) -> NoReturn:
    """Skip the calling test because a tool it drives is not installed; fail it instead when the
    environment variable ``required_by`` is true (1, true, yes, on): where a run requires the tool,
    its absence is a broken setup, not a test that may pass quietly."""
    if os.environ.get(required_by, "").strip().lower() in {"1", "true", "yes", "on"}:
        pytest.fail(f"{reason}; {required_by} is set, so this run requires it", pytrace=False)
    pytest.skip(reason)


# ---------------------------------------------------------------------------------------------- HTTP
def submit(client, images: tuple[bytes, bytes], headers: dict | None = None, **fields):
    """POST /transfer as multipart with the two images and ``fields``; the response."""
    files = {"structure": ("s.png", images[0], "image/png"), "appearance": ("a.jpg", images[1], "image/jpeg")}
    return client.post("/transfer", files=files, data={k: str(v) for k, v in fields.items()}, headers=headers)


def poll(client, job_id: str, headers: dict | None = None, statuses=TERMINAL, timeout: float = 20.0) -> dict:
    """GET /jobs/{id} until its status is one of ``statuses``; the job object."""

    def check():
        job = client.get(f"/jobs/{job_id}", headers=headers).json()
        return job if job["status"] in statuses else None

    return wait_for(check, timeout, interval=0.05 if timeout <= 30 else 0.2)


def assert_problem(response, status: int) -> dict:
    """The response is an RFC 9457 problem with ``status``; its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    return body


# ---------------------------------------------------------------------------------------------- processes
def stop_process(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM, wait ``grace`` seconds, then SIGKILL: never leaves a process behind."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class RedisServer:
    """A private redis-server on loopback; with ``directory`` it keeps an AOF there (fsync always),
    as compose does, so records and messages survive a restart on the same port."""

    def __init__(self, port: int | None = None, directory: Path | str | None = None) -> None:
        self.port, self.dir, self.proc = port or free_port(), directory, None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            tool_missing("redis-server is not installed (scripts/test.sh installs it)", REQUIRE_TOOLS)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.dir is None:
            args += ["--appendonly", "no"]
        else:
            args += ["--dir", str(self.dir), "--appendonly", "yes", "--appendfsync", "always"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        try:
            wait_for(lambda: _answers(client.ping), timeout=10)
        finally:
            client.close()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 5)
            self.proc = None


def _answers(fn) -> bool:
    try:
        return bool(fn())
    except Exception:
        return False


class FakeClock:
    """An injectable clock (epoch seconds) that moves only when told: TTL tests without sleeps."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class LiveService:
    """An app (the service's, from create_app) served by a real uvicorn on a free loopback port, in a
    thread of this process, so HTTP clients, the Python client, the CLI and a browser talk to it over
    TCP: ``with LiveService(app) as live: live.url``. ``ready=True`` also waits until /readyz says
    ready (model loaded, a worker live). Stops within bounded time."""

    def __init__(self, app, start_timeout: float = 180.0, ready: bool = False, **uvicorn_options) -> None:
        import uvicorn

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        options = {"log_config": None, "lifespan": "on", "timeout_graceful_shutdown": 5, **uvicorn_options}
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, **options))
        self.start_timeout = start_timeout
        self.wait_ready = ready
        self.thread = None

    def __enter__(self) -> LiveService:
        import threading

        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started or not self.thread.is_alive(), self.start_timeout)
        if not self.server.started:
            raise RuntimeError("the service did not start (see the log above)")
        if self.wait_ready:
            wait_for(self._ready, self.start_timeout)
        return self

    def _ready(self) -> bool:
        import httpx

        try:
            return httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    def __exit__(self, *exc_info) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(60)


#: The package name openapi-python-client's clients are generated under in tests.
GENERATED_PACKAGE = "qalign_generated_client"
#: Any attempt of the generator to reach a network goes to a closed loopback port and fails.
NO_NETWORK = "http://127.0.0.1:9"


@contextlib.contextmanager
def generated_client(url: str, root: Path):
    """The client package openapi-python-client generates, offline, from ``url``/openapi.json, imported.

    The generator knows application/json, application/octet-stream and text/* responses only; its
    documented ``content_type_overrides`` has it read the image media types as binary. Its post hooks
    (ruff formatting the generated code) are switched off: they change layout, not behaviour."""
    import importlib
    import os
    import sys

    import httpx

    from qalign_schema.params import IMAGE_MEDIA_TYPES

    document = root / "openapi.json"
    document.write_bytes(httpx.get(f"{url}/openapi.json", timeout=30).raise_for_status().content)
    config = root / "generator.yml"
    overrides = "".join(f"  {media}: application/octet-stream\n" for media in IMAGE_MEDIA_TYPES)
    config.write_text(f"post_hooks: []\ncontent_type_overrides:\n{overrides}")
    offline = {k: v for k, v in os.environ.items() if k.lower() not in {"no_proxy", "all_proxy"}}
    offline |= {"HTTP_PROXY": NO_NETWORK, "HTTPS_PROXY": NO_NETWORK, "ALL_PROXY": NO_NETWORK}
    command = [sys.executable, "-m", "openapi_python_client", "generate", "--path", str(document)]
    command += ["--output-path", str(root / GENERATED_PACKAGE), "--meta", "none", "--config", str(config)]
    run = subprocess.run(command, env=offline, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "warning" not in (run.stdout + run.stderr).lower(), run.stdout + run.stderr
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module(GENERATED_PACKAGE)
    finally:
        sys.path.remove(str(root))
        for name in [name for name in sys.modules if name.partition(".")[0] == GENERATED_PACKAGE]:
            del sys.modules[name]
