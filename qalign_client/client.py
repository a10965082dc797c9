# Generated from qalign_client/aio.py by `python scripts/unasync_client.py`: edit aio.py, not this file.
"""The client, written once: ``AsyncClient`` in qalign_client/aio.py is the source, and ``Client`` in
qalign_client/client.py is generated from it by ``python scripts/unasync_client.py`` (unasync drops
``async`` and ``await`` and maps each async name onto its sync twin: ``aclose`` -> ``close``,
``httpx.AsyncClient`` -> ``httpx.Client``, ``asleep`` -> ``sleep``...). Edit aio.py only, then
regenerate; tests/qalign_client/test_unasync.py fails when client.py has drifted.

Why generated rather than a sans-IO core with two transports: the requests and the parsing are
already pure (``_core``); what the two clients shared by copy was the control flow (retries,
polling, the events stream's reconnects, paging, downloads). As plain code with ``await`` that flow
reads top to bottom and has one home; a sans-IO form would turn it into effect-yielding generators
driven by two interpreters, more code and harder to follow. What cannot be derived (sleeping,
file I/O kept off the event loop) is the small pair in ``_io``.
"""

from __future__ import annotations

import builtins
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, overload

import httpx

from qalign_client._core import (
    STREAM_READ_TIMEOUT_S,
    Appearances,
    ImageInput,
    JobEvent,
    JobRef,
    ProgressCallback,
    RateLimit,
    ResultTargets,
    RetryPolicy,
    default_headers,
    is_many,
    job_event,
    job_id,
    job_path,
    next_poll_interval,
    one_path,
    parse_job,
    rate_limit_of,
    resolve_server,
    result_path,
    result_paths,
    retry_after_of,
    submit_request,
    succeeded_results,
    transport_error,
    wants_retry,
)
from qalign_client._io import Sleep, run_blocking, sleep, write_atomically
from qalign_client.errors import JobFailedError, JobTimeoutError, TransportError, error_from_response
from qalign_client.sse import SSEDecoder
from qalign_schema.jobs import JobList, JobOut, UsageOut
from qalign_schema.params import TransferParams
from qalign_schema.submission import EventKind

__all__ = ["STREAM_READ_TIMEOUT_S", "Client", "ProgressCallback"]


class Client:
    """A Q-Align service, over HTTP (``AsyncClient``: the same methods, awaited, for asyncio code;
    ``stream`` and ``list`` are async iterators).

    ``base_url`` defaults to $QALIGN_SERVER (else http://127.0.0.1:8000), ``api_key`` to
    $QALIGN_API_KEY. Requests the service asks to retry (429, 503 with Retry-After) and requests
    that never reached it are retried up to ``max_retries`` times; every submit carries an
    Idempotency-Key, the same for all its retries, so a retry never makes a second job.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = resolve_server(base_url)
        self.retry = retry or RetryPolicy(max_retries=max_retries)
        self.timeout = timeout
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=default_headers(api_key, headers),
            timeout=timeout,
            transport=transport,
        )
        self._sleep: Sleep = sleep
        self._clock: Callable[[], float] = time.monotonic
        #: The service's RateLimit fields on the last answer that had them (a submission's, when
        #: the service limits submissions per key); None until one arrives.
        self.rate_limit: RateLimit | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------- jobs
    def submit(
        self,
        structure: ImageInput,
        appearance: Appearances,
        params: TransferParams | Mapping[str, Any] | None = None,
        *,
        webhook_url: str | None = None,
        webhook_events_filter: builtins.list[EventKind] | None = None,
        idempotency_key: str | None = None,
        prefer_wait: float | None = None,
        **overrides: Any,
    ) -> JobOut:
        """Submit a transfer; the job object (``queued``, or finished when ``prefer_wait`` seconds,
        1 to ``MAX_PREFER_WAIT_S``, were enough for the service to finish it).

        Images: paths, bytes, binary files, PIL images or https:// URLs. ``appearance`` is one image
        or a list of 1 to ``MAX_APPEARANCES``: one job, one result per appearance, in order
        (``results``). ``params`` and keyword overrides (``seed=1``, ``aspect="square"``,
        ``size=768``) are checked against TransferParams before anything is sent.
        """
        request = partial(  # reads and encodes the images (async: in a worker thread)
            submit_request,
            structure,
            appearance,
            params,
            overrides,
            webhook_url=webhook_url,
            webhook_events_filter=webhook_events_filter,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            wait=prefer_wait,
        )
        body, headers = run_blocking(request)
        kwargs: dict[str, Any] = {"json": body, "headers": headers}
        if prefer_wait is not None:  # the service holds the answer up to prefer_wait seconds
            kwargs["timeout"] = httpx.Timeout(self.timeout, read=self.timeout + prefer_wait)
        return parse_job(self._send("POST", "/transfer", **kwargs))

    def get(self, job: JobRef) -> JobOut:
        """The job object now."""
        return parse_job(self._send("GET", job_path(job)))

    def wait(
        self,
        job: JobRef,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        *,
        max_poll_interval: float = 5.0,
        on_progress: ProgressCallback | None = None,
    ) -> JobOut:
        """Poll until the job is finished (succeeded, failed or canceled) and return it.

        The interval grows from ``poll_interval`` to ``max_poll_interval``; a Retry-After from the
        service wins. JobTimeoutError after ``timeout`` seconds (None: no limit)."""
        deadline = None if timeout is None else self._clock() + timeout
        interval = poll_interval
        current = job if isinstance(job, JobOut) else None
        while True:
            if current is None or not current.finished:
                response = self._send("GET", job_path(job))
                current = parse_job(response)
                if on_progress is not None:
                    on_progress(current)
            if current.finished:
                return current
            delay = retry_after_of(response) or interval
            interval = next_poll_interval(interval, max_poll_interval)
            if deadline is not None:
                left = deadline - self._clock()
                if left <= 0:
                    raise JobTimeoutError(
                        f"job {current.id} still {current.status} after {timeout} s", current
                    )
                delay = min(delay, left)
            self._sleep(delay)
            current = None

    def stream(
        self, job: JobRef, *, last_event_id: str | None = None, max_reconnects: int = 5
    ) -> Iterator[JobEvent]:
        """The job's events (GET /jobs/{id}/events): ``progress`` events, then one terminal event
        (``succeeded``, ``failed`` or ``canceled``), after which the iterator ends.

        A broken or silent connection is reopened with Last-Event-ID (up to ``max_reconnects``
        times in a row without an event), so no event is seen twice and none is lost."""
        decoder = SSEDecoder(last_event_id)
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if decoder.last_event_id:
                headers["Last-Event-ID"] = decoder.last_event_id
            timeout = httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT_S)
            try:
                response = self._send(
                    "GET", job_path(job, "/events"), stream=True, headers=headers, timeout=timeout
                )
                try:
                    for line in response.iter_lines():
                        sse = decoder.feed(line)
                        event = job_event(sse) if sse is not None else None
                        if event is None:
                            continue
                        failures = 0
                        yield event
                        if event.terminal:
                            return
                finally:
                    response.close()
            except (httpx.TransportError, TransportError):
                pass  # reconnect below
            # The stream ended or broke before the terminal event: a finished job ends it here.
            current = self.get(job)
            if current.finished:
                yield JobEvent(event=current.status, id=None, job=current)
                return
            failures += 1
            delay = self.retry.delay(failures - 1, (decoder.retry_ms or 0) / 1000 or None)
            if failures > max_reconnects or delay is None:
                raise TransportError(f"the events stream of job {job_id(job)} kept breaking")
            self._sleep(delay)
            decoder = decoder.resumed()

    @overload
    def result(self, job: JobRef, path: None = None, k: int = 0) -> bytes: ...

    @overload
    def result(self, job: JobRef, path: str | os.PathLike[str], k: int = 0) -> Path: ...

    def result(self, job: JobRef, path: str | os.PathLike[str] | None = None, k: int = 0) -> bytes | Path:
        """Result ``k`` (0: the first; one per appearance, in order): its bytes, or, with ``path``,
        written there (atomically) and the path.

        Follows the service's redirect to a presigned store URL (the API key is not sent there).
        ConflictError while the job has not succeeded; NotFoundError for a ``k`` beyond its results."""
        headers = {"Accept": "image/*, application/problem+json"}
        response = self._send("GET", result_path(job, k), stream=True, follow_redirects=True, headers=headers)
        try:
            body = response.read()
        except httpx.TransportError as exc:
            raise transport_error(exc, "GET", str(response.url)) from exc
        finally:
            response.close()
        if path is None:
            return body
        return run_blocking(partial(write_atomically, Path(path), body))

    @overload
    def results(self, job: JobRef, target: None = None) -> builtins.list[bytes]: ...

    @overload
    def results(self, job: JobRef, target: ResultTargets) -> builtins.list[Path]: ...

    def results(
        self, job: JobRef, target: ResultTargets | None = None
    ) -> builtins.list[bytes] | builtins.list[Path]:
        """All of a succeeded job's results, in the appearances' order (fetched one after another):
        their bytes, or written to ``target`` and their paths. ``target``: a file name (one result:
        itself; several: ``out-0.png``, ``out-1.png`` beside it), an existing directory (files
        ``qalign-<job id>[-<k>].<ext>`` in it; none is created) or a list of one path per result, as
        ``qalign_schema.naming`` says. ConflictError while the job has not succeeded."""
        current = job if isinstance(job, JobOut) and job.status == "succeeded" else self.get(job)
        if target is None:
            return [self.result(current, k=k) for k in range(len(succeeded_results(current)))]
        paths = run_blocking(partial(result_paths, current, target))  # looks for a directory
        return [self.result(current, path, k) for k, path in enumerate(paths)]

    def cancel(self, job: JobRef) -> JobOut:
        """Cancel: a queued job never runs; a running one stops at its next step (the object still
        says ``running`` until then). A finished job is returned unchanged."""
        return parse_job(self._send("DELETE", job_path(job)))

    def erase(self, job: JobRef) -> None:
        """Erase the job and its data (record, inputs, result); a running job is canceled first.
        Afterwards every URL of the job answers 404."""
        self._send("DELETE", job_path(job), params={"purge": "true"})

    def list_page(
        self, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> JobList:
        """One page of the caller's jobs, newest first."""
        query = {k: v for k, v in (("status", status), ("limit", limit), ("cursor", cursor)) if v is not None}
        response = self._send("GET", "/jobs", params=query)
        return JobList.model_validate_json(response.content)

    def usage(self, since: datetime | None = None, until: datetime | None = None) -> UsageOut:
        """What the caller's jobs created in [since, until) cost (GET /usage): jobs, succeeded,
        unfinished, compute seconds, UNet rows and output megapixels (until: now; since: every job
        the service still keeps). A time without a zone is UTC."""
        query = {name: value.isoformat() for name, value in (("since", since), ("until", until)) if value}
        response = self._send("GET", "/usage", params=query)
        return UsageOut.model_validate_json(response.content)

    def list(
        self, status: str | None = None, limit: int | None = None, *, page_size: int = 20
    ) -> Iterator[JobOut]:
        """The caller's jobs, newest first, fetched page by page; at most ``limit`` of them."""
        cursor, seen = None, 0
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - seen))
            page = self.list_page(status, size, cursor)
            for item in page.jobs:
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            if not page.next_cursor or not page.jobs:
                return
            cursor = page.next_cursor

    def run(
        self,
        structure: ImageInput,
        appearance: Appearances,
        params: TransferParams | Mapping[str, Any] | None = None,
        *,
        path: str | os.PathLike[str] | ResultTargets | None = None,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_progress: ProgressCallback | None = None,
        **submit_kwargs: Any,
    ) -> bytes | Path | builtins.list[bytes] | builtins.list[Path]:
        """Submit, wait, download. One appearance: the result's bytes (or the path it was written
        to). A list of appearances: a list, one per appearance. ``path`` is named as for ``results``
        (``out.png`` -> ``out-0.png``, ``out-1.png`` beside it; an existing directory receives
        ``qalign-<job id>[-<k>].<ext>``). JobFailedError when the job fails or is canceled."""
        job = self.submit(structure, appearance, params, **submit_kwargs)
        job = self.wait(job, timeout=timeout, poll_interval=poll_interval, on_progress=on_progress)
        if job.status != "succeeded":
            raise JobFailedError(job)
        if is_many(appearance):
            return self.results(job, path)
        target = one_path(path)
        if target is None:
            return self.result(job)
        (written,) = self.results(job, target)
        return written

    # ---------------------------------------------------------------------------------- sending
    def _send(
        self, method: str, url: str, *, stream: bool = False, follow_redirects: bool = False, **kwargs: Any
    ) -> httpx.Response:
        """One request with the retry policy; a successful response (streamed when ``stream``: the
        caller closes it) or the typed error."""
        attempt = 0
        while True:
            try:
                request = self._http.build_request(method, url, **kwargs)
                response = self._http.send(request, stream=stream, follow_redirects=follow_redirects)
            except httpx.TransportError as exc:
                delay = self.retry.delay(attempt, None)
                if delay is None:
                    raise transport_error(exc, method, url) from exc
            else:
                self.rate_limit = rate_limit_of(response) or self.rate_limit
                if response.status_code < 400:
                    return response
                try:
                    response.read()
                finally:
                    response.close()
                delay = self.retry.delay(attempt, retry_after_of(response)) if wants_retry(response) else None
                if delay is None:
                    raise error_from_response(response)
            self._sleep(delay)
            attempt += 1
