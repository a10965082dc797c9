"""A Server-Sent Events decoder (the WHATWG "event stream interpretation"), fed one line at a time.

Small and without I/O so the sync and async clients share it and it is tested on its own: the
clients split the byte stream into lines (httpx's ``iter_lines`` knows CRLF, LF and CR) and feed
them here; a blank line dispatches the event built so far.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None
    retry_ms: int | None = None


class SSEDecoder:
    """Accumulates fields until a blank line. ``last_event_id`` persists across events and changes
    only when an event is complete (as in browsers): it is what a reconnect sends as
    ``Last-Event-ID``, so an event cut off mid-way is received again."""

    def __init__(self, last_event_id: str | None = None, retry_ms: int | None = None) -> None:
        self.last_event_id = self._id = last_event_id
        self.retry_ms = retry_ms
        self._event = ""
        self._data: list[str] = []
        self._first_line = True

    def feed(self, line: str) -> ServerSentEvent | None:
        """Take one line (without its line ending); an event when the line ends one, else None."""
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment (keep-alive ping)
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None

    def resumed(self) -> SSEDecoder:
        """A decoder for a new connection: nothing half-read, the last event id and retry kept."""
        return SSEDecoder(self.last_event_id, self.retry_ms)

    def _dispatch(self) -> ServerSentEvent | None:
        self.last_event_id = self._id
        event, data = self._event or "message", self._data
        self._event, self._data = "", []
        if not data:
            return None
        return ServerSentEvent(
            event=event, data="\n".join(data), id=self.last_event_id, retry_ms=self.retry_ms
        )
