"""API keys: stored only as SHA-256 hashes, several at once, revocable.

``QALIGN_API_KEYS`` lists ``name:sha256hex`` entries (``python -m service.auth NAME`` prints a new key
and its entry); ``QALIGN_REVOKED_API_KEYS`` lists hashes (or entries) that now get 403. The key's
name owns its jobs.
No keys configured means open mode (logged as a warning at start).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass


class AuthError(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "qa_" + secrets.token_urlsafe(32)


def _entries(spec: str | None) -> dict[str, str]:
    """``"name:hash, name2:hash2"`` -> {hash: name}; a bare hash names itself by its prefix."""
    table = {}
    for item in (spec or "").replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        name, _, digest = item.rpartition(":")
        digest = digest.lower()
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"API key entry {item!r} must be name:sha256hex (see 'python -m service.auth')")
        table[digest] = name or digest[:12]
    return table


@dataclass(frozen=True)
class KeyRing:
    active: dict[str, str]  # hash -> owner name
    revoked: frozenset[str]

    @classmethod
    def from_settings(cls, api_keys: str | None, revoked: str | None) -> KeyRing:
        return cls(active=_entries(api_keys), revoked=frozenset(_entries(revoked)))

    @property
    def open(self) -> bool:
        return not self.active and not self.revoked

    def owner(self, authorization: str | None) -> str | None:
        """The owner of the bearer key in an Authorization header; None in open mode."""
        scheme, _, token = (authorization or "").partition(" ")
        return self.owner_of_token(token if scheme.lower() == "bearer" else None)

    def owner_of_token(self, token: str | None) -> str | None:
        """The owner of a bearer token (HTTPBearer has parsed the header); None in open mode."""
        if self.open:
            return None
        if not token or not token.strip():
            raise AuthError(401, "missing API key: send 'Authorization: Bearer <key>'")
        digest = hash_key(token.strip())
        if any(hmac.compare_digest(digest, r) for r in self.revoked):
            raise AuthError(403, "this API key has been revoked; ask for a new one")
        for known, name in self.active.items():
            if hmac.compare_digest(digest, known):
                return name
        raise AuthError(401, "unknown API key")


def main() -> None:
    """``python -m service.auth [NAME]``: a new key and the QALIGN_API_KEYS entry that accepts it."""
    import sys

    name = sys.argv[1] if len(sys.argv) > 1 else "client"
    if not name or any(c in name for c in ",:\n") or name != name.strip():
        raise SystemExit("the key name must not be empty or contain ',', ':' or spaces at its ends")
    key = new_key()
    print(f"key:   {key}")
    print(f"entry: {name}:{hash_key(key)}")


if __name__ == "__main__":
    main()
