"""The HTTP edge: what uvicorn accepts before a request reaches the app, bounded without a proxy.

uvicorn's default parser (httptools) has no limit on a request head, and uvicorn itself no time
limit on receiving one: one 50 MB header line was accepted, 1500 slow-header and 500 idle
connections stayed open. ``EdgeH11Protocol`` is uvicorn's h11 protocol with:

- a request-head size limit (request line + headers, ``QALIGN_MAX_HEADER_BYTES``): over it, a 431
  problem and the connection closed, before more is buffered;
- a head deadline (``QALIGN_HEADER_TIMEOUT_S``): the whole head must arrive within it, counted from
  the connection (or, on a kept-alive connection, from the first byte of the next request); a
  connection that sends nothing is closed by it too;
- a body deadline (``QALIGN_BODY_TIMEOUT_S``): once the head is in, body bytes must keep arriving,
  at most that long apart; a body that stalls is answered 408 and its connection closed. While the
  server itself is not reading (flow control: the app has not taken what it has), the clock waits;
- a connection cap per process (``QALIGN_MAX_CONNECTIONS``): connections over it are closed at once.

Idle kept-alive connections close after ``QALIGN_KEEPALIVE_TIMEOUT_S`` (uvicorn's own timer). The
header count and body limits are the app's (``service.http.intake.RequestLimitMiddleware``), so they
hold under any server. ``uvicorn_options`` is the one place every start path (``qalign serve``, the
image, compose, Kubernetes) gets these from.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from qalign_schema.problems import Problem, ProblemKind
from service.settings import Settings


@dataclass(frozen=True)
class EdgeLimits:
    max_header_bytes: int
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> EdgeLimits:
        return cls(
            settings.max_header_bytes,
            settings.header_timeout_s,
            settings.body_timeout_s,
            settings.max_connections,
        )


def closing_problem_response(status: HTTPStatus, kind: ProblemKind, detail: str) -> bytes:
    """A complete HTTP/1.1 answer with a problem-details body and ``connection: close``, written by the
    edge itself (no app involved)."""
    body = json.dumps(Problem.of(status, detail, kind=kind).model_dump(exclude_none=True)).encode()
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        "content-type: application/problem+json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def head_too_large_response(limit: int) -> bytes:
    """The 431 answer to a request head over ``limit`` bytes (written before the app runs)."""
    detail = (
        f"the request line and headers are over {limit} bytes (QALIGN_MAX_HEADER_BYTES); "
        f"send at most {limit} bytes of headers"
    )
    return closing_problem_response(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "headers-too-large", detail)


def body_stalled_response(timeout_s: float) -> bytes:
    """The 408 answer to a request body that stopped arriving for ``timeout_s`` seconds."""
    detail = (
        f"no part of the request body arrived for {timeout_s:g} s (QALIGN_BODY_TIMEOUT_S); send the "
        "whole body without pausing that long"
    )
    return closing_problem_response(HTTPStatus.REQUEST_TIMEOUT, "body-stalled", detail)


class EdgeH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a head size limit, head and body deadlines and a connection cap.

    ``limits`` is set on a subclass by ``protocol_for(settings)`` (one server in a process, tests);
    left None (``uvicorn --workers``, whose processes import this class by name) the limits are read
    from the environment's Settings once per process.
    """

    limits: EdgeLimits | None = None
    _from_environment: EdgeLimits | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.edge = self._edge_limits()
        self.head_deadline: asyncio.TimerHandle | None = None
        self.body_deadline: asyncio.TimerHandle | None = None

    @classmethod
    def _edge_limits(cls) -> EdgeLimits:
        if cls.limits is not None:
            return cls.limits
        if EdgeH11Protocol._from_environment is None:
            EdgeH11Protocol._from_environment = EdgeLimits.of(Settings())
        return EdgeH11Protocol._from_environment

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.edge.max_connections:
            self.logger.warning(
                "connection refused: over QALIGN_MAX_CONNECTIONS (%d)", self.edge.max_connections
            )
            transport.close()
            return
        self._arm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        self._disarm_body_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        waiting_for_head = self.conn.their_state is h11.IDLE
        if waiting_for_head:
            if self.head_deadline is None:  # the first byte of a request on a kept-alive connection
                self._arm_head_deadline()
            buffered = self.conn.trailing_data[0]
            head = buffered + data if buffered else data
            end = head.find(b"\r\n\r\n")
            if (end == -1 and len(head) > self.edge.max_header_bytes) or end + 4 > self.edge.max_header_bytes:
                self._refuse_head()
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the head is in: the app's limits take over
            self._disarm_head_deadline()
        if self.conn.their_state is h11.SEND_BODY:  # each arrival restarts the body's clock
            self._arm_body_deadline()
        else:
            self._disarm_body_deadline()

    def _refuse_head(self) -> None:
        self._disarm_head_deadline()
        if not self.transport.is_closing():
            self.transport.write(head_too_large_response(self.edge.max_header_bytes))
            self.transport.close()

    def _arm_head_deadline(self) -> None:
        _cancel(self.head_deadline)
        self.head_deadline = self.loop.call_later(self.edge.header_timeout_s, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        _cancel(self.head_deadline)
        self.head_deadline = None

    def _head_timed_out(self) -> None:
        """No complete request head in time: close without an answer (the client may be gone)."""
        self.head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()

    def _arm_body_deadline(self) -> None:
        _cancel(self.body_deadline)
        self.body_deadline = self.loop.call_later(self.edge.body_timeout_s, self._body_timed_out)

    def _disarm_body_deadline(self) -> None:
        _cancel(self.body_deadline)
        self.body_deadline = None

    def _body_timed_out(self) -> None:
        """The body stopped arriving: answer 408 (unless the app already answered) and close. The app,
        still reading, gets a disconnect."""
        self.body_deadline = None
        if self.conn.their_state is not h11.SEND_BODY or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the server is not reading: the wait is not the client's
            self._arm_body_deadline()
            return
        self.logger.info(
            "request body stalled for %s s: answered 408, connection closed", self.edge.body_timeout_s
        )
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(body_stalled_response(self.edge.body_timeout_s))
        self.transport.close()


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    """Cancel ``timer`` if there is one (a deadline not armed is None)."""
    if timer is not None:
        timer.cancel()


def protocol_for(settings: Settings) -> type[EdgeH11Protocol]:
    """An EdgeH11Protocol bound to ``settings`` (a server in this process)."""
    return type("BoundEdgeH11Protocol", (EdgeH11Protocol,), {"limits": EdgeLimits.of(settings)})


def uvicorn_options(settings: Settings, *, workers: int = 1) -> dict[str, Any]:
    """The uvicorn.Config arguments of the edge limits. With several worker processes the protocol
    is named by import path (each process loads it and reads the same environment)."""
    protocol: str | type[EdgeH11Protocol] = (
        "service.http.edge:EdgeH11Protocol" if workers > 1 else protocol_for(settings)
    )
    return {
        "http": protocol,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.keepalive_timeout_s,
    }
