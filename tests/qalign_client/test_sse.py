"""qalign_client.sse: the event-stream interpretation of the WHATWG HTML standard, line by line."""

from __future__ import annotations

from qalign_client.sse import ServerSentEvent, SSEDecoder


def decode(text: str, decoder: SSEDecoder | None = None) -> list[ServerSentEvent]:
    decoder = decoder or SSEDecoder()
    events = [decoder.feed(line) for line in text.splitlines()]
    return [e for e in events if e is not None]


def test_events_with_names_ids_and_multiline_data():
    text = 'event: progress\nid: 1\ndata: {"a":\ndata:  1}\n\nevent: succeeded\nid: 2\ndata: x\n\n'
    assert decode(text) == [
        ServerSentEvent(event="progress", data='{"a":\n 1}', id="1"),
        ServerSentEvent(event="succeeded", data="x", id="2"),
    ]


def test_comments_pings_and_unknown_fields_are_ignored():
    text = ": ping\n\n:\nfoo: bar\ndata: only\n\n"
    assert decode(text) == [ServerSentEvent(event="message", data="only", id=None)]


def test_an_event_without_data_is_not_dispatched_but_its_id_counts():
    decoder = SSEDecoder()
    assert decode("id: 7\nevent: progress\n\n", decoder) == []
    assert decoder.last_event_id == "7"
    assert decode("data: d\n\n", decoder) == [ServerSentEvent(event="message", data="d", id="7")]


def test_field_syntax_edge_cases():
    # No space after the colon; a field without a colon (empty value); only one leading space stripped.
    text = "event:progress\ndata\ndata:  two spaces\n\n"
    assert decode(text) == [ServerSentEvent(event="progress", data="\n two spaces", id=None)]


def test_retry_and_ids_with_nul_and_a_byte_order_mark():
    decoder = SSEDecoder()
    events = decode("\ufeffretry: 1500\nid: 3\ndata: a\n\nretry: soon\nid: bad\0id\ndata: b\n\n", decoder)
    assert [e.id for e in events] == ["3", "3"] and decoder.retry_ms == 1500
    assert events[0].event == "message"  # the BOM did not corrupt the first field name


def test_an_event_cut_off_does_not_advance_the_resume_id():
    decoder = SSEDecoder()
    assert decode("id: 4\ndata: a\n\nid: 5\ndata: half", decoder)[-1].id == "4"
    assert decoder.last_event_id == "4"  # event 5 was not completed: a reconnect asks for it again
    fresh = decoder.resumed()
    assert fresh.last_event_id == "4"
    assert decode("data: new\n\n", fresh) == [ServerSentEvent(event="message", data="new", id="4")]


def test_crlf_line_endings():
    decoder = SSEDecoder()
    events = [decoder.feed(line) for line in ["event: progress\r", "data: x\r", "\r"]]
    assert [e for e in events if e] == [ServerSentEvent(event="progress", data="x", id=None)]
