"""The HTTP edge (service.http.edge, RequestLimitMiddleware) against the real start path: ``qalign serve``
(service.cli.serve) in a subprocess on a loopback port, attacked over raw sockets. The server's
memory is read from /proc (VmRSS now, VmHWM the peak) before and after each attempt."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from testkit import free_port, stop_process, wait_for

pytestmark = pytest.mark.timeout(300)
MiB = 1024 * 1024


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def memory(self, field: str = "VmRSS") -> int:
        """Bytes of ``field`` (VmRSS: resident now; VmHWM: the peak so far) of the server process."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} in /proc/{self.proc.pid}/status")

    def healthy(self) -> bool:
        return httpx.get(f"{self.url}/healthz", timeout=10).status_code == 200

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=30)


def serve(tmp_path: Path, **settings: str) -> Iterator[Server]:
    port, log_path = free_port(), tmp_path / f"server-{time.monotonic_ns()}.log"
    env = {
        **os.environ,
        "QALIGN_MODEL": str(tmp_path / "no-model"),  # never loaded: these tests send no job
        "QALIGN_DEVICE": "cpu",
        "QALIGN_DATA_DIR": str(tmp_path / f"data-{port}"),
        "PYTHONUNBUFFERED": "1",
        **{f"QALIGN_{name.upper()}": value for name, value in settings.items()},
    }
    env.pop("QALIGN_REDIS_URL", None)
    env.pop("QALIGN_S3_BUCKET", None)
    code = f"from service.cli import serve; serve('127.0.0.1', {port})"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, port, log_path)
    try:

        def up() -> bool:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                return server.healthy()
            except httpx.TransportError:
                return False

        wait_for(up, timeout=180)
        yield server
    finally:
        stop_process(proc, 30)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """Short timeouts so the tests see them act; the other limits at their defaults."""
    yield from serve(
        tmp_path_factory.mktemp("edge"), header_timeout_s="2", keepalive_timeout_s="1", body_timeout_s="2"
    )


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server has closed ``sock`` (EOF or reset); False while it stays open."""
    try:
        return sock.recv(65536) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of one response on ``sock`` (by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a complete head: {data[:200]!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "closed before the whole body"
        body += chunk
    return int(lines[0].split()[1]), json.loads(body[:length])


def test_an_oversized_header_is_refused_with_431_before_it_is_buffered(server):
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
        status, problem = read_response(sock)
    assert status == 431 and problem["type"] == "/problems/headers-too-large"
    assert "16384 bytes" in problem["detail"] and "QALIGN_MAX_HEADER_BYTES" in problem["detail"]


def test_fifty_megabyte_headers_leave_memory_bounded(server):
    """10 connections each try to send a 50 MB header line (the measured attack took the server from
    597 to 941 MB): each is cut off after the head limit, the server's peak memory barely moves."""
    peak_before = server.memory("VmHWM")
    chunk = b"a" * 65536
    sent_each = []
    for _ in range(10):
        sent = 0
        with server.connect() as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
            try:
                while sent < 50 * MiB:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
        sent_each.append(sent)
    assert max(sent_each) < 50 * MiB, "the server stopped reading every one of them"
    grown = server.memory("VmHWM") - peak_before
    most = max(sent_each) / MiB
    print(f"50 MB headers x10: cut off after at most {most:.1f} MiB sent; peak grew {grown / MiB:.1f} MiB")
    assert grown < 20 * MiB
    assert server.healthy()


def test_too_many_header_fields_are_431(server):
    headers = {f"x-h{i}": "1" for i in range(101)}
    response = httpx.get(f"{server.url}/healthz", headers=headers, timeout=30)
    assert response.status_code == 431
    assert (
        "at most 100" in response.json()["detail"] and "QALIGN_MAX_HEADER_COUNT" in response.json()["detail"]
    )


def test_slow_headers_are_cut_off_by_the_head_deadline(server):
    """50 connections dribble a head one byte at a time (slowloris): all are closed after the 2 s
    head deadline, although each keeps sending; the server stays healthy meanwhile."""
    socks = [server.connect() for _ in range(50)]
    started = time.monotonic()
    open_socks = list(socks)
    try:
        for sock in socks:
            sock.settimeout(0.05)
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        while open_socks and time.monotonic() - started < 60:
            for sock in list(open_socks):
                try:
                    sock.send(b"X")
                except OSError:
                    open_socks.remove(sock)
                    continue
                if closed_by_server(sock):
                    open_socks.remove(sock)
        elapsed = time.monotonic() - started
        assert not open_socks, f"{len(open_socks)} slow connections still open after {elapsed:.0f} s"
        assert 1.5 <= elapsed < 30, elapsed
        print(f"50 slow-header connections: all closed after {elapsed:.1f} s (head deadline 2 s)")
        assert server.healthy()
    finally:
        for sock in socks:
            sock.close()


def test_idle_connections_are_closed(server):
    """Connections that send nothing (head deadline) and a kept-alive one after its response
    (QALIGN_KEEPALIVE_TIMEOUT_S) are closed by the server."""
    silent = [server.connect() for _ in range(50)]
    kept = server.connect()
    try:
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        kept.settimeout(30)
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        for sock in [*silent, kept]:
            sock.settimeout(0.05)
        started = time.monotonic()
        wait_for(lambda: all(closed_by_server(s) for s in [*silent, kept]), timeout=60)
        print(f"50 silent + 1 kept-alive connections: all closed after {time.monotonic() - started:.1f} s")
    finally:
        for sock in [*silent, kept]:
            sock.close()


def test_a_stalled_body_is_answered_408_and_its_connection_closed(server):
    """The head and 10 of 1000 declared body bytes, then nothing: after the 2 s body deadline a 408
    problem, then the connection closed; the app, cut off mid-read, logs no error."""
    with server.connect() as sock:
        sock.sendall(
            b"POST /transfer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"seed": 1'
        )
        started = time.monotonic()
        status, problem = read_response(sock)
        waited = time.monotonic() - started
        assert status == 408 and problem["type"] == "/problems/body-stalled", problem
        assert "QALIGN_BODY_TIMEOUT_S" in problem["detail"] and waited >= 1.5, (problem, waited)
        sock.settimeout(0.05)
        wait_for(lambda: closed_by_server(sock), timeout=60)
    print(f"stalled body: 408 after {waited:.1f} s (body deadline 2 s)")
    assert server.healthy()
    wait_for(lambda: 'route="/transfer",status="499"' in httpx.get(f"{server.url}/metrics").text, timeout=60)
    assert 'route="/transfer",status="400"' not in httpx.get(f"{server.url}/metrics").text
    assert "unhandled error" not in server.log.read_text(errors="replace")


def test_a_body_that_keeps_arriving_is_not_cut_off(server):
    """A body sent in 12 pieces 0.25 s apart (3 s in all, longer than the 2 s body deadline) reaches
    the app, which answers it (here a 400: the JSON is not an object)."""
    body = b"[" + b" " * 1198 + b"]"
    with server.connect() as sock:
        sock.sendall(
            b"POST /transfer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        for start in range(0, len(body), 100):
            time.sleep(0.25)
            sock.sendall(body[start : start + 100])
        status, problem = read_response(sock)
    assert status == 400 and "must be an object" in problem["detail"], problem


def test_a_huge_json_body_is_refused_with_bounded_memory(server):
    """A 150 MB JSON body (measured before: +430 MB peak, held after). Declared: refused from the
    Content-Length before a byte is read. Chunked: counted while it streams, refused at the JSON limit."""
    from service.settings import Settings

    json_limit = Settings(_env_file=None).json_limit
    peak_before = server.memory("VmHWM")
    with server.connect() as sock:
        head = (
            "POST /transfer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {150 * MiB}\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"structure": "' + b"A" * MiB)
        status, problem = read_response(sock)
    assert status == 413 and f"the limit is {json_limit} bytes" in problem["detail"]
    assert "multipart/form-data" in problem["detail"]

    def chunked() -> Iterator[bytes]:
        yield b'{"structure": "'
        for _ in range(150):
            yield b"A" * MiB

    response = httpx.post(
        f"{server.url}/transfer", content=chunked(), headers={"content-type": "application/json"}, timeout=120
    )
    assert (
        response.status_code == 413 and f"over the limit of {json_limit} bytes" in response.json()["detail"]
    )
    grown = server.memory("VmHWM") - peak_before
    assert grown < 2 * json_limit + 20 * MiB, f"peak grew by {grown / MiB:.0f} MiB"
    print(f"huge JSON: peak RSS grew by {grown / MiB:.1f} MiB (JSON limit {json_limit / MiB:.1f} MiB)")
    assert server.healthy()


def test_connections_over_the_cap_are_closed_at_once(tmp_path):
    for server in serve(tmp_path, max_connections="20", header_timeout_s="120"):
        held = [server.connect() for _ in range(20)]
        extra = [server.connect() for _ in range(10)]
        try:
            for sock in [*held, *extra]:
                sock.settimeout(0.05)
            wait_for(lambda extra=extra: all(closed_by_server(s) for s in extra), timeout=30)
            assert not any(closed_by_server(s) for s in held), "the first 20 stay open (head deadline 120 s)"
        finally:
            for sock in [*held, *extra]:
                sock.close()
        wait_for(server.healthy, timeout=30)
