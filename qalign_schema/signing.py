"""Standard Webhooks signatures of the service's deliveries: the one definition the service signs
with and receivers (``qalign_client.webhooks.verify``) check against.

``webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}." + body)>``, possibly several
space-separated (a secret rotation). The key is the base64-decoded rest of a ``whsec_`` secret, or
else the secret's UTF-8 bytes. Receivers refuse timestamps more than ``TOLERANCE_S`` off their clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"
#: How far a receiver lets ``webhook-timestamp`` be off its clock (Standard Webhooks' default).
TOLERANCE_S = 300


def signing_key(secret: str | bytes) -> bytes:
    """The HMAC key of a secret: base64-decoded after ``whsec_``, else the secret's bytes."""
    if isinstance(secret, bytes):
        return secret
    if secret.startswith(SECRET_PREFIX):
        try:
            return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("a whsec_ secret must be base64 after the prefix") from exc
    return secret.encode("utf-8")


def sign(secret: str | bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of one delivery attempt (``v1,<base64>``)."""
    message = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_matches(
    secret: str | bytes, webhook_id: str, timestamp: int, body: bytes, offered: str
) -> bool:
    """Whether one of the space-separated ``v1,`` signatures in ``offered`` is this body's, compared in
    constant time (the timestamp's age is the receiver's check)."""
    expected = sign(secret, webhook_id, timestamp, body).encode()
    candidates = [c.encode() for c in offered.split() if c.startswith("v1,")]
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)
