"""Verifying the service's webhooks (the Standard Webhooks scheme) in a receiver.

The service signs each delivery with three headers:

- ``webhook-id``: the delivery's id (the same on every retry of that delivery; use it to drop
  duplicates),
- ``webhook-timestamp``: when it was signed, in Unix seconds,
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}." + body)>``, possibly
  several space-separated (during a secret rotation).

The key is the base64-decoded rest of a ``whsec_`` secret, or else the secret's UTF-8 bytes. A
delivery is accepted when one signature matches over the exact body bytes received and the
timestamp is within ``tolerance`` seconds of now (replays of old deliveries are refused).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from pydantic import ValidationError as PydanticValidationError

from qalign_client.errors import WebhookVerificationError
from qalign_schema.jobs import JobOut
from qalign_schema.signing import SECRET_PREFIX, TOLERANCE_S, sign, signature_matches, signing_key

__all__ = ["DEFAULT_TOLERANCE_S", "SECRET_PREFIX", "sign", "signing_key", "verify"]

#: Receivers reject timestamps further than this from their clock (seconds).
DEFAULT_TOLERANCE_S = TOLERANCE_S


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    tolerance: float = DEFAULT_TOLERANCE_S,
    *,
    now: float | None = None,
) -> JobOut:
    """Check a delivery and return its job object; WebhookVerificationError when any check fails.

    ``headers``: the request headers (any mapping; names are matched case-insensitively).
    ``body``: the raw body exactly as received (not re-serialised JSON)."""
    found = {name.lower(): value for name, value in headers.items()}
    missing = [h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if not found.get(h)]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    stamp_text = found["webhook-timestamp"].strip()
    try:
        timestamp = int(stamp_text)
    except ValueError:
        raise WebhookVerificationError(
            f"webhook-timestamp is not Unix seconds: {stamp_text[:40]!r}"
        ) from None
    clock = time.time() if now is None else now
    if abs(clock - timestamp) > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {clock - timestamp:+.0f} s off this clock (tolerance {tolerance:g} s)"
        )
    if not signature_matches(secret, found["webhook-id"], timestamp, raw, found["webhook-signature"]):
        raise WebhookVerificationError("no webhook-signature matches the body under this secret")
    try:
        return JobOut.model_validate_json(raw)
    except PydanticValidationError as exc:
        raise WebhookVerificationError(f"the signed body is not a job object: {exc}") from None
