"""The Python client of the Q-Align service: submit, wait, stream progress, download, cancel, erase.

    from qalign_client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as client:
        client.run("cat.png", "cup.jpg", {"seed": 1}, path="out.png")

Needs only httpx (with its anyio) and pydantic (the shapes come from ``qalign_schema``, shared with
the service). ``Client`` is generated from ``AsyncClient`` (aio.py): see scripts/unasync_client.py.
"""

from qalign_client._core import JobEvent, RateLimit, RetryPolicy
from qalign_client._version import __version__
from qalign_client.aio import AsyncClient
from qalign_client.client import Client
from qalign_client.errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    QAlignError,
    RateLimitedError,
    ServerError,
    TransportError,
    UnavailableError,
    ValidationError,
    WebhookVerificationError,
)
from qalign_schema import JobList, JobOut, JobUsageOut, Problem, TransferParams, UsageOut

__all__ = [
    "AsyncClient",
    "AuthError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "JobEvent",
    "JobFailedError",
    "JobList",
    "JobOut",
    "JobTimeoutError",
    "JobUsageOut",
    "NotFoundError",
    "Problem",
    "QAlignError",
    "RateLimit",
    "RateLimitedError",
    "RetryPolicy",
    "ServerError",
    "TransferParams",
    "TransportError",
    "UsageOut",
    "UnavailableError",
    "ValidationError",
    "WebhookVerificationError",
    "__version__",
]
