"""Domain errors the use cases raise; service.http.problems turns each into problem details.

They say what was wrong in words a caller can act on; how that maps to HTTP lives in one place.
"""

from __future__ import annotations


class DomainError(Exception):
    """Base: ``detail`` is caller-facing; ``retry_after`` (seconds) when retrying later can work."""

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.detail, self.retry_after = detail, retry_after


class NotReady(DomainError):
    """A dependency (broker, worker, store) is down: nothing was done, retry later."""


class QueueFull(DomainError):
    """Too many queued jobs overall (``per_key`` False) or for this API key (True)."""

    def __init__(self, detail: str, *, retry_after: int, per_key: bool = False) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.per_key = per_key


class RateLimited(DomainError):
    """This API key has made its allowed submissions in the current window; ``headers`` are its
    RateLimit fields (limit, remaining 0, reset)."""

    def __init__(self, detail: str, *, retry_after: int, headers: dict[str, str]) -> None:
        super().__init__(detail, retry_after=retry_after)
        self.headers = headers


class JobNotFound(DomainError):
    """No such job for this caller (another key's job is not found either)."""


class IdempotencyConflict(DomainError):
    """The Idempotency-Key was used with another request (``in_progress`` False) or its first request
    is still being processed (True)."""

    def __init__(self, detail: str, *, in_progress: bool = False) -> None:
        super().__init__(detail, retry_after=1 if in_progress else None)
        self.in_progress = in_progress


class ResultNotReady(DomainError):
    """The job has no result (yet, or ever)."""


class ResultNotFound(DomainError):
    """The job has no result k: k is outside 0 .. appearances - 1 (404 naming the range)."""


class ResultGone(DomainError):
    """The job succeeded but its result is no longer in the store."""


class InvalidInput(DomainError):
    """A header or query value the caller sent is malformed (422 naming it and what is allowed)."""

    def __init__(self, field: str, message: str, allowed: str) -> None:
        super().__init__(f"{field}: {message} (allowed: {allowed})")
        self.field, self.message, self.allowed = field, message, allowed
