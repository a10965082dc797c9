"""What the client needs beyond its control flow, without I/O: request bodies, paths, the retry
policy and the parsing of answers. ``AsyncClient`` (aio.py) adds the sending, the waiting and the
reading; ``Client`` (client.py) is generated from it."""

from __future__ import annotations

import base64
import io
import os
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import quote

import httpx
from pydantic import ValidationError as PydanticValidationError

from qalign_client._version import __version__
from qalign_client.errors import (
    ConflictError,
    QAlignError,
    TransportError,
    error_from_response,
    local_field_error,
    local_validation_error,
    parse_retry_after,
)
from qalign_client.sse import ServerSentEvent
from qalign_schema.jobs import TERMINAL_STATUSES, JobOut, ResultOut
from qalign_schema.naming import default_result_stem, result_extension, result_file_paths
from qalign_schema.params import MAX_APPEARANCES, TransferParams
from qalign_schema.submission import MAX_PREFER_WAIT_S, EventKind

#: An image input: a path, raw bytes, a binary file object, a PIL image, or an https:// URL (fetched
#: by the service).
ImageInput = str | os.PathLike[str] | bytes | bytearray | memoryview | Any
#: The appearance of a submit: one image, or a list (or tuple) of 1 to MAX_APPEARANCES images, one
#: result per image, in order.
Appearances = ImageInput | Sequence[ImageInput]
#: A job: its id or its job object.
JobRef = str | JobOut
#: Where ``results`` writes: a file name or an existing directory (named as ``qalign_schema.naming``
#: says) or one path per result.
ResultTargets = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
#: What ``wait`` calls with each job state it fetched.
ProgressCallback = Callable[[JobOut], None]

DEFAULT_SERVER = "http://127.0.0.1:8000"
#: Answers worth retrying as they are: the service asked the caller to come back later.
RETRY_STATUSES = frozenset({429, 503})
#: Read timeout of the events stream: the service sends a keep-alive comment well within it; a
#: stream silent for longer is reconnected (resuming after the last event).
STREAM_READ_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class JobEvent:
    """One event of ``stream``: ``event`` is ``progress`` or the terminal status; ``job`` is the job
    object at that moment; ``id`` is what a reconnect resumes after."""

    event: str
    id: str | None
    job: JobOut

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_STATUSES


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long the client retries a request the service asked to retry (429, 503, an
    Idempotency-Key still in progress) or that never reached it (connection errors)."""

    max_retries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    #: A Retry-After longer than this is not waited out: the error goes to the caller.
    max_retry_after_s: float = 120.0

    def delay(self, attempt: int, retry_after: float | None) -> float | None:
        """Seconds to wait before retry number ``attempt + 1``; None = give up."""
        if attempt >= self.max_retries:
            return None
        if retry_after is not None:
            return retry_after if retry_after <= self.max_retry_after_s else None
        return min(self.max_backoff_s, self.backoff_s * 2.0**attempt) * random.uniform(0.5, 1.0)


def resolve_server(base_url: str | None) -> str:
    return (base_url or os.environ.get("QALIGN_SERVER") or DEFAULT_SERVER).rstrip("/")


def default_headers(api_key: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get("QALIGN_API_KEY")
    headers = {"User-Agent": f"qalign-client/{__version__}", "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    headers.update(extra or {})
    return headers


def job_id(job: JobRef) -> str:
    if isinstance(job, JobOut):
        return job.id
    if isinstance(job, str) and job.strip():
        return job.strip()
    raise TypeError(f"expected a job id or a JobOut, got {job!r}")


def job_path(job: JobRef, suffix: str = "") -> str:
    return f"/jobs/{quote(job_id(job), safe='')}{suffix}"


def encode_image(value: ImageInput, field: str) -> str:
    """The JSON value of one image input: the URL itself, or the bytes as base64."""
    if isinstance(value, str) and value.lower().startswith(("https://", "http://")):
        return value  # fetched by the service (https only: it names the input when it refuses)
    if isinstance(value, (str, os.PathLike)):
        data = Path(value).read_bytes()
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif hasattr(value, "read"):
        data = value.read()
        if not isinstance(data, bytes):
            raise TypeError(f"{field}: the file object must be opened in binary mode")
    elif _is_pil_image(value):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        raise TypeError(
            f"{field}: expected a path, bytes, a binary file, a PIL image or an https:// URL; "
            f"got {type(value).__name__}"
        )
    return base64.b64encode(data).decode("ascii")


def _is_pil_image(value: object) -> bool:
    pil = sys.modules.get("PIL.Image")  # only if the caller uses Pillow: never imported here
    return pil is not None and isinstance(value, pil.Image)


def merge_params(
    params: TransferParams | Mapping[str, Any] | None, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The parameters the caller set, checked against the service's own schema before sending (so a
    bad value fails at once, with the same message the service would give), as JSON values."""
    if isinstance(params, TransferParams):
        given = params.model_dump(exclude_unset=True)
    elif params is None:
        given = {}
    elif isinstance(params, Mapping):
        given = dict(params)
    else:
        raise TypeError(f"params must be TransferParams, a dict or None; got {type(params).__name__}")
    given.update(overrides)
    try:
        checked = TransferParams.model_validate(given)
    except PydanticValidationError as exc:
        raise local_validation_error(exc) from None
    return checked.model_dump(mode="json", exclude_unset=True)


def is_many(appearance: Appearances) -> TypeGuard[Sequence[ImageInput]]:
    """Whether the caller passed several appearances (a list or tuple), not one image. Bytes, paths
    and file objects are one image even though some of them are sequences."""
    return isinstance(appearance, (list, tuple))


def appearance_values(appearance: Appearances) -> str | list[str]:
    """The JSON value of ``appearance``: one encoded image, or a list of 1 to MAX_APPEARANCES (a list
    of one is sent as one value, which every version of the service accepts)."""
    if not is_many(appearance):
        return encode_image(appearance, "appearance")
    items = list(appearance)
    if not 1 <= len(items) <= MAX_APPEARANCES:
        raise local_field_error(
            "appearance",
            f"1 to {MAX_APPEARANCES} appearance images per job; got {len(items)}",
            allowed=f"1 to {MAX_APPEARANCES} appearance images",
        )
    encoded = [encode_image(item, f"appearance[{k}]") for k, item in enumerate(items)]
    return encoded[0] if len(encoded) == 1 else encoded


def submit_request(
    structure: ImageInput,
    appearance: Appearances,
    params: TransferParams | Mapping[str, Any] | None,
    overrides: Mapping[str, Any],
    *,
    webhook_url: str | None,
    webhook_events_filter: Sequence[EventKind] | None,
    idempotency_key: str,
    wait: float | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The JSON body and headers of POST /transfer."""
    body: dict[str, Any] = merge_params(params, overrides)
    body["structure"] = encode_image(structure, "structure")
    body["appearance"] = appearance_values(appearance)
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    if webhook_events_filter is not None:
        body["webhook_events_filter"] = list(webhook_events_filter)
    headers = {"Idempotency-Key": idempotency_key}
    if wait is not None:
        seconds = int(wait)
        if not 1 <= seconds <= MAX_PREFER_WAIT_S:
            raise ValueError(f"wait must be 1 to {MAX_PREFER_WAIT_S} seconds; got {wait}")
        headers["Prefer"] = f"wait={seconds}"
    return body, headers


def result_links(job: JobOut) -> list[ResultOut]:
    """The job's results, in the appearances' order (``result`` alone from a service without the
    ``results`` list); empty until the job has succeeded."""
    results = list(job.results)
    if not results and job.result is not None:
        results = [job.result]
    return results


def result_path(job: JobRef, k: int) -> str:
    """GET path of result ``k``: ``/result`` for the first (every version of the service has it),
    ``/results/{k}`` for the others."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be a result index 0, 1, ...; got {k!r}")
    return job_path(job, "/result" if k == 0 else f"/results/{k}")


def extension_of(content_type: str) -> str:
    return result_extension(content_type) or "png"


def succeeded_results(job: JobOut) -> list[ResultOut]:
    """The results of a succeeded job; ConflictError when it has not succeeded (it has none yet)."""
    if job.status != "succeeded":
        raise ConflictError(f"job {job.id} is {job.status}: it has no results (only a succeeded job has)")
    return result_links(job)


def result_paths(job: JobOut, target: ResultTargets) -> list[Path]:
    """Where each of a succeeded job's results goes: one target named as ``qalign_schema.naming``
    says (``out.png`` -> ``out-0.png``, ``out-1.png`` beside it; an existing directory receives
    ``qalign-<job id>-<k>.<ext>``), or exactly one path each. ConflictError when it has not succeeded."""
    links = succeeded_results(job)
    if isinstance(target, (str, os.PathLike)):
        extensions = [extension_of(link.content_type) for link in links]
        return result_file_paths(Path(target), extensions, default_result_stem(job.id))
    paths = [Path(item) for item in target]
    if len(paths) != len(links):
        raise ValueError(f"job {job.id} has {len(links)} results; got {len(paths)} paths")
    return paths


def one_path(path: str | os.PathLike[str] | ResultTargets | None) -> str | os.PathLike[str] | None:
    """``run``'s ``path`` for one appearance: one file (or None), not a list."""
    if path is None or isinstance(path, (str, os.PathLike)):
        return path
    raise TypeError(f"one appearance makes one result: path must be one path; got {type(path).__name__}")


@dataclass(frozen=True)
class RateLimit:
    """The service's RateLimit header fields on its last answer to a submission: the quota per
    window, what is left of it, seconds until the window resets, and the policy (``10;w=60``)."""

    limit: int
    remaining: int
    reset_s: int
    policy: str | None = None


def rate_limit_of(response: httpx.Response) -> RateLimit | None:
    """The RateLimit-* fields of ``response``, or None when it has none (or they do not parse)."""
    fields = [response.headers.get(f"ratelimit-{name}") for name in ("limit", "remaining", "reset")]
    if any(value is None or not value.strip().isdigit() for value in fields):
        return None
    limit, remaining, reset = (int(value or 0) for value in fields)
    return RateLimit(limit, remaining, reset, response.headers.get("ratelimit-policy"))


def retry_after_of(response: httpx.Response) -> float | None:
    value: str | None = response.headers.get("retry-after")
    return parse_retry_after(value)


def wants_retry(response: httpx.Response) -> bool:
    """429, 503, or 409 for an Idempotency-Key whose first request is still being processed (our own
    earlier attempt): the service asks to come back later."""
    if response.status_code in RETRY_STATUSES:
        return True
    if response.status_code == 409 and "retry-after" in response.headers:
        error = error_from_response(response)
        return isinstance(error, ConflictError) and (error.type or "").endswith("in-progress")
    return False


def transport_error(exc: httpx.TransportError, method: str, url: str) -> TransportError:
    return TransportError(f"cannot reach the service ({method} {url}): {exc or type(exc).__name__}")


def parse_job(response: httpx.Response) -> JobOut:
    try:
        return JobOut.model_validate_json(response.content)
    except PydanticValidationError as exc:
        raise QAlignError(f"the service answered something that is not a job object: {exc}") from None


def job_event(sse: ServerSentEvent) -> JobEvent | None:
    """The job event of an SSE message; None for messages that carry no job (unknown kinds)."""
    if sse.event != "progress" and sse.event not in TERMINAL_STATUSES:
        return None
    try:
        job = JobOut.model_validate_json(sse.data)
    except PydanticValidationError as exc:
        raise QAlignError(f"event {sse.event!r} does not carry a job object: {exc}") from None
    return JobEvent(event=sse.event, id=sse.id, job=job)


def next_poll_interval(current: float, maximum: float) -> float:
    return min(maximum, current * 1.5)
