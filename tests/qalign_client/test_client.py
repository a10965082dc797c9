"""qalign_client.Client and AsyncClient against scripted answers (httpx.MockTransport): the retry
policy, idempotency, typed errors, polling, the events stream's reconnects, downloads and pages.

Every test that takes ``connect`` runs twice, through the sync and through the async client, with
the same script and the same assertions: the two must behave alike (Client is generated from
AsyncClient; tests/qalign_client/test_unasync.py keeps it so).

These are unit tests of the client's own logic; the same calls run against the real services in
tests/integration/test_client_embedded.py and test_client_distributed.py.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from net_helpers import LOOPBACK_ONLY, namespace_launcher
from PIL import Image

import qalign_client
from qalign_client import (
    AsyncClient,
    AuthError,
    BadRequestError,
    Client,
    ConflictError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnavailableError,
    ValidationError,
)

# Names non-loopback addresses (targets the checks must refuse or never reach): every test
# here runs inside a loopback-only network namespace (tests/net_helpers.py).
pytestmark = LOOPBACK_ONLY
test_in_loopback_only_namespace = namespace_launcher(__file__)

BASE = "http://qalign.test"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16


def job(
    status: str = "queued",
    job_id: str = "j1",
    progress: float = 0.0,
    stage: str | None = None,
    results: int | None = None,
) -> dict:
    """A job object; ``results``: how many result links a succeeded job lists (None: only ``result``,
    as a service before v1.2 answers)."""
    finished = status in ("succeeded", "failed", "canceled")
    links = [
        {"index": k, "url": f"{BASE}/jobs/{job_id}/results/{k}", "content_type": "image/webp",
         "width": 12, "height": 8}
        for k in range(results or 0)
    ] if status == "succeeded" else []  # fmt: skip
    return {
        "results": links,
        "appearances": results or 1,
        "id": job_id,
        "status": status,
        "stage": stage or ("done" if finished else "queued"),
        "progress": progress,
        "created_at": "2026-01-01T00:00:00Z",
        "started_at": None,
        "finished_at": None,
        "params": {},
        "result": {"url": f"/jobs/{job_id}/result", "content_type": "image/png", "width": 8, "height": 8}
        if status == "succeeded"
        else None,
        "error": {"type": "internal_error", "detail": "boom"} if status == "failed" else None,
        "metrics": {},
    }


def problem(status: int, detail: str = "nope", kind: str = "about:blank", **extra) -> dict:
    return {"type": kind, "title": "T", "status": status, "detail": detail, **extra}


def answer(status: int, body: dict | None = None, headers: dict | None = None) -> httpx.Response:
    content_type = "application/problem+json" if status >= 400 else "application/json"
    return httpx.Response(status, json=body, headers={"content-type": content_type, **(headers or {})})


class Script:
    """Answers requests in order (one callable or response per request) and records them."""

    def __init__(self, *answers: httpx.Response | Callable[[httpx.Request], httpx.Response] | Exception):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if not self.answers:
            raise AssertionError(f"unexpected request {request.method} {request.url}")
        item = self.answers.pop(0)
        if isinstance(item, Exception):
            raise item
        return item(request) if callable(item) else item


class FakeTime:
    """The client's sleep and clock: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now, self.sleeps = 1000.0, []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


class Blocking:
    """One client behind plain calls, so a test reads the same for both: the sync client's methods
    as they are, the async client's run to completion on the portal's event loop; iterators
    (``stream``, ``list``) come back as lists."""

    def __init__(self, client: Client | AsyncClient, portal: BlockingPortal | None) -> None:
        self.client, self.portal = client, portal

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.client, name)
        if not callable(attribute):
            return attribute
        if self.portal is None:
            return lambda *args, **kwargs: _collect(attribute(*args, **kwargs))
        portal = self.portal
        return lambda *args, **kwargs: portal.call(functools.partial(_acollect, attribute, *args, **kwargs))


def _collect(out: Any) -> Any:
    return list(out) if isinstance(out, Iterator) else out


async def _acollect(method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    out = method(*args, **kwargs)
    return [item async for item in out] if isinstance(out, AsyncIterator) else await out


Connect = Callable[..., tuple[Blocking, FakeTime]]


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Iterator[Connect]:
    """Makes clients of one kind (the test runs once per kind) on a scripted transport, with a fake
    clock; closes them afterwards. The async ones run on one event loop in a portal thread."""
    with contextlib.ExitStack() as stack:
        portal = stack.enter_context(start_blocking_portal()) if request.param == "async" else None
        made: list[Blocking] = []

        def make(
            script: Script, base_url: str | None = BASE, api_key: str | None = "secret-key", **kwargs: Any
        ) -> tuple[Blocking, FakeTime]:
            kind = Client if portal is None else AsyncClient
            client = kind(base_url, api_key, transport=httpx.MockTransport(script), **kwargs)
            fake = FakeTime()
            client._sleep = fake.sleep if portal is None else fake.asleep
            client._clock = lambda: fake.now
            made.append(Blocking(client, portal))
            return made[-1], fake

        yield make
        for client in made:
            client.close() if portal is None else client.aclose()


# ---------------------------------------------------------------------------------------------- submit
def test_submit_sends_json_with_images_params_key_and_auth(connect):
    script = Script(answer(202, job()))
    client, _ = connect(script)
    out = client.submit(PNG, "https://example.com/cup.jpg", {"seed": 3}, steps=10, webhook_url="https://h/x")
    assert isinstance(out, qalign_client.JobOut) and out.status == "queued"
    (request,) = script.requests
    body = json.loads(request.content)
    assert base64.b64decode(body["structure"]) == PNG
    assert body["appearance"] == "https://example.com/cup.jpg"  # fetched by the service
    assert body["seed"] == 3 and body["steps"] == 10 and body["webhook_url"] == "https://h/x"
    assert "method" not in body  # only what the caller set: the service applies its defaults
    assert request.headers["authorization"] == "Bearer secret-key"
    assert len(request.headers["idempotency-key"]) == 36  # a uuid4
    assert "prefer" not in request.headers


def test_submit_accepts_paths_files_and_pil_images(connect, tmp_path):
    path = tmp_path / "s.png"
    path.write_bytes(PNG)
    image = Image.new("RGB", (4, 3), "red")
    script = Script(answer(202, job()), answer(202, job()))
    client, _ = connect(script)
    client.submit(path, str(path), qalign_client.TransferParams(steps=4, align_steps_fine=(1, 9)))
    with open(path, "rb") as handle:
        client.submit(handle, image, prefer_wait=30)
    first, second = (json.loads(r.content) for r in script.requests)
    assert base64.b64decode(first["structure"]) == PNG == base64.b64decode(first["appearance"])
    assert first["steps"] == 4 and first["align_steps_fine"] == [1, 9]
    assert Image.open(io.BytesIO(base64.b64decode(second["appearance"]))).size == (4, 3)
    assert script.requests[1].headers["prefer"] == "wait=30"
    with pytest.raises(TypeError, match="structure: expected a path"):
        client.submit(12345, PNG)
    with pytest.raises(ValueError, match="wait must be 1 to 60"):
        client.submit(PNG, PNG, prefer_wait=61)


def test_bad_parameters_fail_before_sending(connect):
    script = Script()
    client, _ = connect(script)
    with pytest.raises(ValidationError) as caught:
        client.submit(PNG, PNG, {"steps": 1}, colour="blue")
    assert caught.value.status == 422
    assert {e.field for e in caught.value.errors} == {"steps", "colour"}
    assert script.requests == []


def test_submit_retries_503_and_429_with_one_idempotency_key_honouring_retry_after(connect):
    script = Script(
        answer(503, problem(503, "no worker"), {"Retry-After": "7"}),
        answer(429, problem(429, "queue full"), {"Retry-After": "3"}),
        httpx.ConnectError("refused"),
        answer(409, problem(409, "first still in progress", "/problems/idempotency-key-in-progress"),
               {"Retry-After": "1"}),
        answer(200, job()),
    )  # fmt: skip
    client, fake = connect(script)
    assert client.submit(PNG, PNG).id == "j1"
    keys = {r.headers["idempotency-key"] for r in script.requests}
    assert len(script.requests) == 5 and len(keys) == 1
    assert fake.sleeps[:2] == [7, 3] and fake.sleeps[3] == 1
    assert 0 < fake.sleeps[2] <= 2  # no Retry-After on a connection error: backoff


def test_retries_give_up_with_the_typed_error(connect):
    script = Script(*[answer(503, problem(503, "store down"), {"Retry-After": "1"})] * 3)
    client, fake = connect(script, max_retries=2)
    with pytest.raises(UnavailableError) as caught:
        client.submit(PNG, PNG)
    error = caught.value
    assert error.status == 503 and error.detail == "store down" and error.retry_after == 1
    assert isinstance(error, ServerError) and len(script.requests) == 3 and fake.sleeps == [1, 1]


def test_a_retry_after_beyond_the_limit_is_not_waited_out(connect):
    script = Script(answer(429, problem(429, "busy"), {"Retry-After": "3600"}))
    client, fake = connect(script)
    with pytest.raises(RateLimitedError) as caught:
        client.submit(PNG, PNG)
    assert caught.value.retry_after == 3600 and fake.sleeps == []


def test_connection_failures_end_as_transport_error(connect):
    script = Script(*[httpx.ConnectError("refused")] * 3)
    client, _ = connect(script, max_retries=2)
    with pytest.raises(TransportError, match="cannot reach the service"):
        client.get("j1")


@pytest.mark.parametrize(
    "status,error_class",
    [
        (400, BadRequestError), (413, BadRequestError), (415, BadRequestError), (401, AuthError),
        (403, AuthError), (404, NotFoundError), (410, NotFoundError), (409, ConflictError),
        (422, ValidationError), (500, ServerError),
    ],
)  # fmt: skip
def test_refusals_are_typed_and_carry_the_problem(connect, status, error_class):
    errors = [{"field": "steps", "message": "too big", "allowed": ">= 2"}] if status == 422 else None
    script = Script(answer(status, problem(status, "what to change", "/problems/x", errors=errors)))
    client, _ = connect(script)
    with pytest.raises(error_class) as caught:
        client.get("j1")
    error = caught.value
    assert (error.status, error.type, error.kind, error.title) == (status, "/problems/x", "x", "T")
    assert error.detail == "what to change"
    assert isinstance(error, qalign_client.QAlignError) and len(script.requests) == 1
    if errors:
        assert error.errors[0].field == "steps" and error.errors[0].allowed == ">= 2"


def test_a_refusal_that_is_not_problem_details_still_says_something(connect):
    script = Script(httpx.Response(502, text="<html>bad gateway</html>"))
    client, _ = connect(script)
    with pytest.raises(ServerError) as caught:
        client.get("j1")
    assert caught.value.status == 502 and "bad gateway" in caught.value.detail
    assert caught.value.kind is None


# ---------------------------------------------------------------------------------------------- wait
def test_wait_polls_with_growing_interval_and_honours_retry_after(connect):
    script = Script(
        answer(200, job("queued")),
        answer(200, job("running", progress=0.5), {"Retry-After": "4"}),
        answer(200, job("running", progress=0.7)),
        answer(200, job("succeeded", progress=1.0)),
    )
    client, fake = connect(script)
    seen = []
    done = client.wait("j1", poll_interval=1.0, on_progress=lambda j: seen.append(j.progress))
    assert done.status == "succeeded" and seen == [0.0, 0.5, 0.7, 1.0]
    assert fake.sleeps == [1.0, 4.0, 2.25]


def test_wait_on_a_finished_job_object_sends_nothing_and_times_out_with_the_last_state(connect):
    client, _ = connect(Script())
    finished = qalign_client.JobOut.model_validate(job("failed"))
    assert client.wait(finished) is finished

    script = Script(*[answer(200, job("running", progress=0.3))] * 10)
    client, fake = connect(script)
    with pytest.raises(JobTimeoutError) as caught:
        client.wait("j1", timeout=2.0, poll_interval=0.5)
    assert caught.value.job.progress == 0.3 and sum(fake.sleeps) == pytest.approx(2.0)


def test_run_raises_job_failed(connect):
    script = Script(answer(202, job()), answer(200, job("failed")))
    client, _ = connect(script)
    with pytest.raises(JobFailedError, match="internal_error: boom") as caught:
        client.run(PNG, PNG)
    assert caught.value.job.status == "failed"


# ---------------------------------------------------------------------------------------------- stream
EVENT_STREAM = {"content-type": "text/event-stream"}


def sse(event: str, event_id: int, body: dict) -> bytes:
    return f"event: {event}\nid: {event_id}\ndata: {json.dumps(body)}\n\n".encode()


class BreakingBody(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A body that sends ``chunks`` and then loses the connection, to either client."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        raise httpx.ReadError("connection reset")

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        raise httpx.ReadError("connection reset")


def broken_stream(*chunks: bytes) -> Callable[[httpx.Request], httpx.Response]:
    """An events answer that sends ``chunks`` and then loses the connection."""
    return lambda request: httpx.Response(200, headers=EVENT_STREAM, stream=BreakingBody(*chunks))


def test_stream_resumes_after_a_break_with_last_event_id(connect):
    first = [
        b": ping\n\n",
        sse("progress", 1, job("running", progress=0.1, stage="inverting")),
        b'event: progress\nid: 2\ndata: {"id": "j1", ',  # cut off mid-event
    ]
    second = sse("progress", 2, job("running", progress=0.5, stage="denoising")) + b"event: log\ndata: x\n\n"
    second += sse("succeeded", 3, job("succeeded", progress=1.0))
    script = Script(
        broken_stream(*first),
        answer(200, job("running", progress=0.1)),  # the client checks the job is still going
        httpx.Response(200, headers=EVENT_STREAM, content=second),
    )  # fmt: skip
    client, fake = connect(script)
    events = list(client.stream("j1"))
    assert [(e.event, e.id, e.job.progress) for e in events] == [
        ("progress", "1", 0.1), ("progress", "2", 0.5), ("succeeded", "3", 1.0),
    ]  # fmt: skip
    assert events[-1].terminal and events[0].job.stage == "inverting"
    opened = [r for r in script.requests if r.url.path.endswith("/events")]
    assert "last-event-id" not in opened[0].headers and opened[1].headers["last-event-id"] == "1"
    assert opened[0].headers["accept"] == "text/event-stream" and len(fake.sleeps) == 1


def test_stream_of_a_job_that_ended_meanwhile_ends_with_its_terminal_state(connect):
    script = Script(
        httpx.Response(200, headers=EVENT_STREAM, content=b": ping\n\n"),
        answer(200, job("canceled")),
    )
    client, _ = connect(script)
    (event,) = list(client.stream(qalign_client.JobOut.model_validate(job("running"))))
    assert event.event == "canceled" and event.terminal and event.id is None


def test_stream_refusal_is_typed_and_endless_breaks_give_up(connect):
    client, _ = connect(Script(answer(404, problem(404, "no job j1"))))
    with pytest.raises(NotFoundError):
        list(client.stream("j1"))

    empty = httpx.Response(200, headers=EVENT_STREAM, content=b"")
    script = Script(*[empty, answer(200, job("running"))] * 3)
    client, _ = connect(script)
    with pytest.raises(TransportError, match="kept breaking"):
        list(client.stream("j1", max_reconnects=2))


# ---------------------------------------------------------------------------------------------- result
def test_result_follows_the_redirect_without_the_api_key(connect, tmp_path):
    store = "http://store.test/bucket/results/j1.png?X-Amz-Signature=abc"
    script = Script(
        httpx.Response(307, headers={"location": store}),
        httpx.Response(200, content=PNG, headers={"content-type": "image/png"}),
        httpx.Response(307, headers={"location": store}),
        httpx.Response(200, content=PNG, headers={"content-type": "image/png"}),
    )
    client, _ = connect(script)
    assert client.result("j1") == PNG
    out = client.result("j1", tmp_path / "out.png")
    assert out == tmp_path / "out.png" and out.read_bytes() == PNG
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left
    api, s3 = script.requests[:2]
    assert api.headers["authorization"] == "Bearer secret-key" and "authorization" not in s3.headers
    assert str(s3.url) == store


def test_result_not_ready_is_a_conflict_and_leaves_no_file(connect, tmp_path):
    client, _ = connect(Script(answer(409, problem(409, "job j1 is running"))))
    with pytest.raises(ConflictError, match="running"):
        client.result("j1", tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- the rest
def test_cancel_erase_and_list_pages(connect):
    pages = [
        {"jobs": [job("succeeded", "a"), job("failed", "b")], "next_cursor": "c1"},
        {"jobs": [job("succeeded", "c")], "next_cursor": None},
    ]
    script = Script(
        answer(202, job("running")),
        httpx.Response(204),
        answer(200, pages[0]),
        answer(200, pages[1]),
        answer(200, pages[0]),
    )
    client, _ = connect(script)
    assert client.cancel("j1").status == "running"
    assert client.erase("j1") is None
    assert [j.id for j in client.list(status="succeeded", page_size=2)] == ["a", "b", "c"]
    assert [j.id for j in client.list(limit=1)] == ["a"]
    cancel, erase, page1, page2, limited = script.requests
    assert cancel.method == "DELETE" and cancel.url.path == "/jobs/j1" and not cancel.url.query
    assert erase.method == "DELETE" and erase.url.params["purge"] == "true"
    assert dict(page1.url.params) == {"status": "succeeded", "limit": "2"}
    assert dict(page2.url.params) == {"status": "succeeded", "limit": "2", "cursor": "c1"}
    assert dict(limited.url.params) == {"limit": "1"}


def test_job_ids_are_quoted_and_env_defaults(connect, monkeypatch):
    script = Script(answer(200, job()))
    monkeypatch.setenv("QALIGN_SERVER", BASE + "/")
    monkeypatch.setenv("QALIGN_API_KEY", "env-key")
    client, _ = connect(script, base_url=None, api_key=None)
    client.get("a/b")
    assert client.base_url == BASE and script.requests[0].url.raw_path == b"/jobs/a%2Fb"
    assert script.requests[0].headers["authorization"] == "Bearer env-key"


# ---------------------------------------------------------------------------------------------- a whole job
def test_a_whole_job_submit_stream_wait_download_list_cancel_erase(connect, tmp_path):
    events = sse("progress", 1, job("running", progress=0.4)) + sse("succeeded", 2, job("succeeded"))
    script = Script(
        answer(503, problem(503, "not ready"), {"Retry-After": "2"}),
        answer(202, job()),
        httpx.Response(200, headers=EVENT_STREAM, content=events),
        answer(200, job("running")),
        answer(200, job("succeeded")),
        httpx.Response(200, content=PNG),
        answer(200, {"jobs": [job("succeeded")], "next_cursor": None}),
        answer(200, job("succeeded")),  # cancel: a finished job comes back unchanged
        httpx.Response(204),
        answer(404, problem(404, "gone")),
    )
    client, fake = connect(script)
    submitted = client.submit(PNG, PNG, seed=2)
    streamed = client.stream(submitted)
    done = client.wait(submitted.id, poll_interval=0.25)
    path = client.result(done, tmp_path / "r.png")
    listed = [j.id for j in client.list()]
    assert client.cancel(done).status == "succeeded"
    client.erase(done)
    with pytest.raises(NotFoundError):
        client.get(done)
    assert script.requests[0].headers["idempotency-key"] == script.requests[1].headers["idempotency-key"]
    assert fake.sleeps == [2, 0.25]
    assert [e.event for e in streamed] == ["progress", "succeeded"]
    assert done.status == "succeeded" and path.read_bytes() == PNG and listed == ["j1"]
    assert [p.name for p in tmp_path.iterdir()] == ["r.png"]


def test_a_download_that_breaks_leaves_no_file(connect, tmp_path):
    body = BreakingBody(PNG[:8])
    script = Script(*[httpx.Response(200, headers={"content-type": "image/png"}, stream=body)] * 3)
    client, _ = connect(script, max_retries=0)
    with pytest.raises(TransportError, match="cannot reach the service"):
        client.result("j1", tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_the_async_client_reads_and_writes_files_off_the_event_loop(tmp_path, monkeypatch):
    """Input images are read, and results written and renamed into place, in worker threads."""
    touched: list[tuple[str, int]] = []
    real_read, real_write, real_replace = Path.read_bytes, Path.write_bytes, os.replace

    def record(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            touched.append((name, threading.get_ident()))
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(Path, "read_bytes", record("read", real_read))
    monkeypatch.setattr(Path, "write_bytes", record("write", real_write))
    monkeypatch.setattr(os, "replace", record("replace", real_replace))
    structure = tmp_path / "structure.png"
    real_write(structure, PNG)
    done = job("succeeded", results=2)
    script = Script(answer(202, job()), answer(200, done), *[httpx.Response(200, content=PNG)] * 2)

    async def scenario() -> tuple[int, list[Path]]:
        async with AsyncClient(BASE, transport=httpx.MockTransport(script)) as client:
            submitted = await client.submit(structure, structure)
            paths = await client.results(submitted.id, tmp_path / "out")
        return threading.get_ident(), paths

    loop_thread, paths = anyio.run(scenario)
    seen = list(touched)
    assert [name for name, _ in seen] == ["read", "read", "write", "replace", "write", "replace"]
    assert all(thread != loop_thread for _, thread in seen), seen
    assert [p.name for p in paths] == ["out-0.webp", "out-1.webp"] and paths[1].read_bytes() == PNG


# ------------------------------------------------------------------------------- several appearances
def test_several_appearances_go_as_a_json_list_in_order_with_aspect(connect):
    script = Script(answer(202, job()), answer(202, job()))
    client, _ = connect(script)
    client.submit(PNG, [b"a", "https://example.com/b.jpg", (b"c")], aspect="square", size=320)
    client.submit(PNG, (b"only",))  # a list of one is one appearance: sent as a single value
    first, second = (json.loads(r.content) for r in script.requests)
    assert [first["appearance"][0], first["appearance"][2]] == [
        base64.b64encode(v).decode() for v in (b"a", b"c")
    ]
    assert first["appearance"][1] == "https://example.com/b.jpg" and len(first["appearance"]) == 3
    assert first["aspect"] == "square" and first["size"] == 320
    assert second["appearance"] == base64.b64encode(b"only").decode() and "aspect" not in second


@pytest.mark.parametrize("count", [0, 9])
def test_too_few_or_too_many_appearances_fail_before_sending(connect, count):
    script = Script()
    client, _ = connect(script)
    with pytest.raises(ValidationError) as caught:
        client.submit(PNG, [PNG] * count)
    error = caught.value
    assert error.status == 422 and error.errors[0].field == "appearance"
    assert f"1 to 8 appearance images per job; got {count}" in error.detail
    assert error.errors[0].allowed == "1 to 8 appearance images" and script.requests == []
    with pytest.raises(ValidationError, match="aspect"):
        client.submit(PNG, PNG, aspect="wide")
    with pytest.raises(TypeError, match=r"appearance\[1\]: expected a path"):
        client.submit(PNG, [PNG, 42])


def test_result_k_and_results_to_bytes_a_directory_or_paths(connect, tmp_path):
    done = job("succeeded", results=3)
    image = [
        httpx.Response(200, content=bytes([k]) * 4, headers={"content-type": "image/webp"}) for k in range(3)
    ]
    script = Script(
        image[2],  # result(k=2)
        answer(200, done), *image,  # results("j1"): the job object, then each image in order
        *image,  # results(job object, directory)
        *image,  # results(job object, file name)
        *image,  # results(job object, paths)
    )  # fmt: skip
    client, _ = connect(script)
    assert client.result("j1", k=2) == b"\x02" * 4
    assert client.results("j1") == [bytes([k]) * 4 for k in range(3)]
    finished = qalign_client.JobOut.model_validate(done)
    (tmp_path / "into").mkdir()
    written = client.results(finished, tmp_path / "into")
    assert [p.name for p in written] == ["qalign-j1-0.webp", "qalign-j1-1.webp", "qalign-j1-2.webp"]
    assert [p.read_bytes() for p in written] == [bytes([k]) * 4 for k in range(3)]
    beside = client.results(finished, tmp_path / "looks.webp")  # a file name: numbered beside it
    assert beside == [tmp_path / f"looks-{k}.webp" for k in range(3)]
    assert not (tmp_path / "looks.webp").exists() and beside[2].read_bytes() == b"\x02" * 4
    named = [tmp_path / f"look-{k}.webp" for k in range(3)]
    assert client.results(finished, named) == named and named[1].read_bytes() == b"\x01" * 4
    paths = [r.url.path for r in script.requests]
    assert paths == [
        "/jobs/j1/results/2",
        "/jobs/j1",
        *(["/jobs/j1/result", "/jobs/j1/results/1", "/jobs/j1/results/2"] * 4),
    ]
    with pytest.raises(ValueError, match="has 3 results; got 2 paths"):
        client.results(finished, named[:2])
    with pytest.raises(ValueError, match="k must be a result index"):
        client.result("j1", k=-1)


def test_results_of_an_unfinished_job_is_a_conflict_and_an_old_service_gives_one(connect, tmp_path):
    old = job("succeeded")  # no results list: a service before v1.2
    script = Script(answer(200, job("running")), answer(200, old), httpx.Response(200, content=PNG))
    client, _ = connect(script)
    with pytest.raises(ConflictError, match="running"):
        client.results("j1", tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert client.results("j1") == [PNG]
    assert [r.url.path for r in script.requests] == ["/jobs/j1", "/jobs/j1", "/jobs/j1/result"]


def test_run_with_several_appearances_returns_one_result_each(connect, tmp_path):
    script = Script(
        answer(202, job()),
        answer(200, job("succeeded", results=2)),
        httpx.Response(200, content=b"zero"),
        httpx.Response(200, content=b"one"),
    )
    client, _ = connect(script)
    out = client.run(PNG, [PNG, PNG], path=tmp_path, aspect="structure")
    assert [p.read_bytes() for p in out] == [b"zero", b"one"]
    assert [p.name for p in out] == ["qalign-j1-0.webp", "qalign-j1-1.webp"]
    assert json.loads(script.requests[0].content)["aspect"] == "structure"


@pytest.mark.parametrize("appearances", [1, 2])
def test_run_names_results_beside_the_given_file_name_never_a_directory(connect, tmp_path, appearances):
    """The issue's case: run(..., path="runmany.png") with two looks made a directory runmany.png/."""
    images = [httpx.Response(200, content=bytes([k]) * 3) for k in range(appearances)]
    script = Script(answer(202, job()), answer(200, job("succeeded", results=appearances)), *images)
    client, _ = connect(script)
    looks = PNG if appearances == 1 else [PNG] * appearances
    out = client.run(PNG, looks, path=tmp_path / "runmany.png")
    written = [out] if appearances == 1 else out
    expected = [tmp_path / "runmany.png"]
    if appearances > 1:
        expected = [tmp_path / f"runmany-{k}.png" for k in range(appearances)]
    assert written == expected
    assert all(path.is_file() for path in expected) and sorted(tmp_path.iterdir()) == expected
    assert [path.read_bytes() for path in expected] == [bytes([k]) * 3 for k in range(appearances)]


# ------------------------------------------------------------------------------------------- usage
def test_usage_asks_for_the_period_and_parses_the_report(connect):
    from datetime import UTC, datetime

    report = {
        "since": "2026-12-01T00:00:00Z", "until": "2026-12-06T00:00:00Z", "jobs": 3, "succeeded": 2,
        "unfinished": 0, "compute_s": 12.5, "unet_rows": 420, "output_megapixels": 0.52,
    }  # fmt: skip
    script = Script(answer(200, report), answer(200, {**report, "since": None}))
    client, _ = connect(script)
    since, until = datetime(2026, 12, 1, tzinfo=UTC), datetime(2026, 12, 6, tzinfo=UTC)
    got = client.usage(since, until)
    assert isinstance(got, qalign_client.UsageOut) and (got.jobs, got.succeeded, got.compute_s) == (
        3,
        2,
        12.5,
    )
    assert got.output_megapixels == 0.52 and got.since == since
    assert client.usage().since is None
    first, second = script.requests
    assert first.url.path == "/usage" and dict(first.url.params) == {
        "since": "2026-12-01T00:00:00+00:00",
        "until": "2026-12-06T00:00:00+00:00",
    }
    assert dict(second.url.params) == {}


def test_the_rate_limit_fields_of_the_last_answer_are_kept(connect):
    limited = {"RateLimit-Limit": "10", "RateLimit-Remaining": "0", "RateLimit-Reset": "42"}
    script = Script(
        answer(202, job(), {"RateLimit-Limit": "10", "RateLimit-Remaining": "9", "RateLimit-Reset": "60",
                            "RateLimit-Policy": "10;w=60"}),
        answer(200, job()),  # no RateLimit fields: the last ones stay
        answer(429, problem(429, "limited", "/problems/rate-limited"), {**limited, "Retry-After": "3600"}),
    )  # fmt: skip
    client, _ = connect(script)
    assert client.rate_limit is None
    client.submit(PNG, PNG)
    assert client.rate_limit == qalign_client.RateLimit(limit=10, remaining=9, reset_s=60, policy="10;w=60")
    client.get("j1")
    assert client.rate_limit.remaining == 9
    with pytest.raises(RateLimitedError) as caught:
        client.submit(PNG, PNG)
    assert caught.value.type == "/problems/rate-limited" and caught.value.retry_after == 3600
    assert caught.value.kind == "rate-limited"
    assert (client.rate_limit.remaining, client.rate_limit.reset_s) == (0, 42)
