"""What a submission carries besides the transfer parameters, and the rules of each: URLs
(``webhook_url``, image URLs), webhook events (``webhook_events_filter``) and the ``Idempotency-Key``
header. The server checks them, the OpenAPI document and ``GET /limits`` publish them, and the client
types its arguments with them, all from here."""

from __future__ import annotations

import re
from typing import Annotated, Literal, get_args

from pydantic import StringConstraints

#: The longest URL accepted anywhere a caller sends one: ``webhook_url`` and image URL inputs.
MAX_URL_LENGTH = 2000
#: ``webhook_url`` as a type: http(s), at most MAX_URL_LENGTH characters (the SSRF policy and the
#: https-only rule of image URLs are checked by the server, not by the shape).
WebhookUrl = Annotated[str, StringConstraints(max_length=MAX_URL_LENGTH, pattern=r"^https?://")]

#: The longest ``Prefer: wait=N`` the API holds a submission for (seconds; a larger N counts as this).
MAX_PREFER_WAIT_S = 60

#: The events a job sends and a ``webhook_events_filter`` may name: ``start`` (it began running) and
#: ``completed`` (its terminal status), in that order.
EventKind = Literal["start", "completed"]
EVENT_KINDS: tuple[EventKind, ...] = get_args(EventKind)

#: The ``Idempotency-Key`` header: 1 to IDEMPOTENCY_KEY_MAX_LENGTH printable ASCII characters without
#: spaces (a UUID is typical); surrounding white space is not part of the key.
IDEMPOTENCY_KEY_MAX_LENGTH = 255
IDEMPOTENCY_KEY_PATTERN = rf"^[!-~]{{1,{IDEMPOTENCY_KEY_MAX_LENGTH}}}$"
IDEMPOTENCY_KEY_RULE = (
    f"1 to {IDEMPOTENCY_KEY_MAX_LENGTH} printable ASCII characters without spaces (a UUID is a good choice)"
)
IdempotencyKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=IDEMPOTENCY_KEY_MAX_LENGTH, pattern=IDEMPOTENCY_KEY_PATTERN),
]
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def is_idempotency_key(key: str) -> bool:
    """Whether ``key`` (already stripped) follows IDEMPOTENCY_KEY_RULE."""
    return _IDEMPOTENCY_KEY.fullmatch(key) is not None
