"""Following a job while it runs: the events stream (Server-Sent Events) and POST /transfer's
``Prefer: wait``. Both read the job record every EVENTS_POLL_S seconds in a worker thread (the
event loop never blocks), so they work the same in both modes and across API replicas; the
record's ``revision``, bumped by every write, says whether anything changed and is the event id.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from sse_starlette import ServerSentEvent

from qalign_schema.submission import MAX_PREFER_WAIT_S
from service.jobs import Job
from service.settings import Settings
from service.usecases.access import JobAccess
from service.usecases.errors import InvalidInput, JobNotFound

#: The longest Prefer: wait honoured; larger values are treated as this.
WAIT_ALLOWED = (
    f"wait=N, N whole seconds from 1 to {MAX_PREFER_WAIT_S} (a larger N counts as {MAX_PREFER_WAIT_S})"
)


def prefer_wait(header: str | None) -> int | None:
    """The ``wait`` preference of a Prefer header (RFC 7240), clamped to MAX_PREFER_WAIT_S; None when absent.

    Other preferences are ignored, as RFC 7240 asks; a wait that is not a whole number >= 1 is refused
    (422) rather than ignored, so a typo does not silently turn a synchronous call asynchronous.
    """
    for preference in (header or "").split(","):
        name, _, value = preference.split(";")[0].strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if not value.isdigit() or int(value) < 1:
            raise InvalidInput("Prefer", f"wait={value!r} is not a whole number >= 1", WAIT_ALLOWED)
        return min(int(value), MAX_PREFER_WAIT_S)
    return None


class JobFollower:
    def __init__(self, settings: Settings, jobs: JobAccess) -> None:
        self.settings, self.jobs = settings, jobs
        self.open_streams = 0  # events streams being served (a client that leaves ends its stream)

    async def _read(self, job_id: str, owner: str | None) -> Job | None:
        try:
            return await anyio.to_thread.run_sync(self.jobs.get, job_id, owner)
        except JobNotFound:  # erased or expired meanwhile
            return None

    async def wait(
        self, job: Job, owner: str | None, seconds: float, disconnected: Callable[[], Awaitable[bool]]
    ) -> Job:
        """The record once it is final, or as it is after ``seconds`` (or when the client left)."""
        deadline = time.monotonic() + seconds
        while not job.finished and (left := deadline - time.monotonic()) > 0:
            await anyio.sleep(min(self.settings.events_poll_s, left))
            if await disconnected() or (latest := await self._read(job.id, owner)) is None:
                break
            job = latest
        return job

    @staticmethod
    def nothing_after(job: Job, last_event_id: int | None) -> bool:
        """The client already saw the terminal event: the stream would be empty (answered 204, which
        also tells a browser's EventSource to stop reconnecting)."""
        return job.finished and last_event_id is not None and last_event_id >= job.revision

    async def events(
        self, job: Job, owner: str | None, last_event_id: int | None, render: Callable[[Job], str]
    ) -> AsyncIterator[ServerSentEvent]:
        """``progress`` whenever status, stage or progress changed, then the terminal event (named after
        the status), each with the job object as data and the record revision as id; resumes after
        ``last_event_id``; ends after the terminal event, or when the record disappears (erased)."""
        seen, last_shape = last_event_id or 0, None
        self.open_streams += 1
        try:
            while True:
                if job.revision > seen:
                    shape = (job.status, job.stage, job.progress)
                    if job.finished or shape != last_shape:
                        data = await anyio.to_thread.run_sync(render, job)
                        name = job.status if job.finished else "progress"
                        yield ServerSentEvent(data=data, event=name, id=str(job.revision))
                        last_shape = shape
                    seen = job.revision
                if job.finished:
                    return
                await anyio.sleep(self.settings.events_poll_s)
                if (latest := await self._read(job.id, owner)) is None:
                    return
                job = latest
        finally:  # also when the client disconnects: sse-starlette cancels the generator
            self.open_streams -= 1
