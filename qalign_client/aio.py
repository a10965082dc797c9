"""The asynchronous client: the same methods as ``Client``, awaited (``stream`` and ``list`` are
async iterators)."""

from __future__ import annotations

import asyncio
import builtins
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx

from qalign_client._core import (
    Appearances,
    ImageInput,
    JobEvent,
    JobRef,
    ResultTargets,
    RetryPolicy,
    check,
    default_headers,
    is_many,
    job_event,
    job_id,
    job_path,
    next_poll_interval,
    parse_job,
    resolve_server,
    result_path,
    result_targets,
    retry_after_of,
    submit_request,
    transport_error,
    wants_retry,
)
from qalign_client.client import STREAM_READ_TIMEOUT_S, ProgressCallback
from qalign_client.errors import JobFailedError, JobTimeoutError, TransportError
from qalign_client.sse import SSEDecoder
from qalign_schema.jobs import JobList, JobOut
from qalign_schema.params import TransferParams


class AsyncClient:
    """A Q-Align service over HTTP, for asyncio code. See ``Client`` for the behaviour."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        max_retries: int = 5,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = resolve_server(base_url)
        self.retry = retry or RetryPolicy(max_retries=max_retries)
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=default_headers(api_key, headers),
            timeout=timeout,
            transport=transport,
        )
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._clock: Callable[[], float] = time.monotonic

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # ------------------------------------------------------------------------------------- jobs
    async def submit(
        self,
        structure: ImageInput,
        appearance: Appearances,
        params: TransferParams | Mapping[str, Any] | None = None,
        *,
        webhook_url: str | None = None,
        webhook_events_filter: builtins.list[str] | None = None,
        idempotency_key: str | None = None,
        prefer_wait: float | None = None,
        **overrides: Any,
    ) -> JobOut:
        """See ``Client.submit``."""
        body, headers = submit_request(
            structure,
            appearance,
            params,
            overrides,
            webhook_url=webhook_url,
            webhook_events_filter=webhook_events_filter,
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            wait=prefer_wait,
        )
        kwargs: dict[str, Any] = {"json": body, "headers": headers}
        if prefer_wait is not None:
            kwargs["timeout"] = httpx.Timeout(self.timeout, read=self.timeout + prefer_wait)
        return parse_job(await self._send("POST", "/transfer", **kwargs))

    async def get(self, job: JobRef) -> JobOut:
        return parse_job(await self._send("GET", job_path(job)))

    async def wait(
        self,
        job: JobRef,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        *,
        max_poll_interval: float = 5.0,
        on_progress: ProgressCallback | None = None,
    ) -> JobOut:
        """See ``Client.wait``."""
        deadline = None if timeout is None else self._clock() + timeout
        interval = poll_interval
        current = job if isinstance(job, JobOut) else None
        while True:
            if current is None or not current.finished:
                response = await self._send("GET", job_path(job))
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
            await self._sleep(delay)
            current = None

    async def stream(
        self, job: JobRef, *, last_event_id: str | None = None, max_reconnects: int = 5
    ) -> AsyncIterator[JobEvent]:
        """See ``Client.stream``."""
        decoder = SSEDecoder(last_event_id)
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if decoder.last_event_id:
                headers["Last-Event-ID"] = decoder.last_event_id
            timeout = httpx.Timeout(self.timeout, read=STREAM_READ_TIMEOUT_S)
            try:
                response = await self._send(
                    "GET", job_path(job, "/events"), stream=True, headers=headers, timeout=timeout
                )
                try:
                    async for line in response.aiter_lines():
                        sse = decoder.feed(line)
                        event = job_event(sse) if sse is not None else None
                        if event is None:
                            continue
                        failures = 0
                        yield event
                        if event.terminal:
                            return
                finally:
                    await response.aclose()
            except (httpx.TransportError, TransportError):
                pass  # reconnect below
            current = await self.get(job)
            if current.finished:
                yield JobEvent(event=current.status, id=None, job=current)
                return
            failures += 1
            delay = self.retry.delay(failures - 1, (decoder.retry_ms or 0) / 1000 or None)
            if failures > max_reconnects or delay is None:
                raise TransportError(f"the events stream of job {job_id(job)} kept breaking")
            await self._sleep(delay)
            decoder = decoder.resumed()

    async def result(self, job: JobRef, path: str | os.PathLike | None = None, k: int = 0) -> bytes | Path:
        """See ``Client.result``."""
        headers = {"Accept": "image/*, application/problem+json"}
        response = await self._send(
            "GET", result_path(job, k), stream=True, follow_redirects=True, headers=headers
        )
        try:
            if path is None:
                return await response.aread()
            return await _write_atomically(Path(path), response)
        except httpx.TransportError as exc:
            raise transport_error(exc, "GET", str(response.url)) from exc
        finally:
            await response.aclose()

    async def results(
        self, job: JobRef, target: ResultTargets | None = None
    ) -> builtins.list[bytes] | builtins.list[Path]:
        """See ``Client.results`` (downloaded one after another, in order)."""
        current = job if isinstance(job, JobOut) and job.status == "succeeded" else await self.get(job)
        return [await self.result(current, path, k) for k, path in enumerate(result_targets(current, target))]

    async def cancel(self, job: JobRef) -> JobOut:
        return parse_job(await self._send("DELETE", job_path(job)))

    async def erase(self, job: JobRef) -> None:
        await self._send("DELETE", job_path(job), params={"purge": "true"})

    async def list_page(
        self, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> JobList:
        query = {k: v for k, v in (("status", status), ("limit", limit), ("cursor", cursor)) if v is not None}
        response = await self._send("GET", "/jobs", params=query)
        return JobList.model_validate_json(response.content)

    async def list(
        self, status: str | None = None, limit: int | None = None, *, page_size: int = 20
    ) -> AsyncIterator[JobOut]:
        cursor, seen = None, 0
        while True:
            size = page_size if limit is None else max(1, min(page_size, limit - seen))
            page = await self.list_page(status, size, cursor)
            for item in page.jobs:
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            if not page.next_cursor or not page.jobs:
                return
            cursor = page.next_cursor

    async def run(
        self,
        structure: ImageInput,
        appearance: Appearances,
        params: TransferParams | Mapping[str, Any] | None = None,
        *,
        path: str | os.PathLike | ResultTargets | None = None,
        timeout: float | None = None,
        poll_interval: float = 0.5,
        on_progress: ProgressCallback | None = None,
        **submit_kwargs: Any,
    ) -> bytes | Path | builtins.list[bytes] | builtins.list[Path]:
        """See ``Client.run``."""
        job = await self.submit(structure, appearance, params, **submit_kwargs)
        job = await self.wait(job, timeout=timeout, poll_interval=poll_interval, on_progress=on_progress)
        if job.status != "succeeded":
            raise JobFailedError(job)
        if is_many(appearance):
            return await self.results(job, path)
        return await self.result(job, path)

    # ---------------------------------------------------------------------------------- sending
    async def _send(
        self, method: str, url: str, *, stream: bool = False, follow_redirects: bool = False, **kwargs: Any
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                request = self._http.build_request(method, url, **kwargs)
                response = await self._http.send(request, stream=stream, follow_redirects=follow_redirects)
            except httpx.TransportError as exc:
                delay = self.retry.delay(attempt, None)
                if delay is None:
                    raise transport_error(exc, method, url) from exc
            else:
                if response.status_code < 400:
                    return response
                try:
                    await response.aread()
                finally:
                    await response.aclose()
                delay = self.retry.delay(attempt, retry_after_of(response)) if wants_retry(response) else None
                if delay is None:
                    check(response)
            await self._sleep(delay)
            attempt += 1


async def _write_atomically(path: Path, response: httpx.Response) -> Path:
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        with open(temp, "wb") as handle:
            async for chunk in response.aiter_bytes():
                handle.write(chunk)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path
