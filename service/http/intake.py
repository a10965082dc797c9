"""Turning a POST /transfer request into validated parameters and image bytes.

Every refusal names what to change: 400 not an image/corrupt, 413 too large (bytes, or pixels
as the header declares them, at any size), 415 unsupported
type, 422 parameter out of range, part missing or URL input refused or not fetchable. Decoding and
URL fetches run in threads (off the event loop).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import io
import json
import warnings
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from PIL import Image
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from qalign_core.images import ImageTooLargeError, check_pixel_count, decoder_complaint, sniff_format
from qalign_core.params import MAX_APPEARANCES, TransferParams
from qalign_schema.params import IMAGE_FORMAT_NAMES, IMAGE_FORMATS, IMAGE_FORMATS_TEXT
from qalign_schema.problems import ProblemKind
from qalign_schema.submission import EVENT_KINDS, IDEMPOTENCY_KEY_RULE, MAX_URL_LENGTH, is_idempotency_key
from service.http.problems import ApiProblem, describe, problem_response, validation_problem
from service.http.remote_inputs import ALLOWED_FORMS, check_input_url, fetch_input, looks_like_url
from service.http.schemas import IMAGE_FIELDS, TUPLE_FIELDS, FieldProblem, TransferJSONRequest
from service.settings import Settings
from service.usecases.submit import Submission
from service.webhooks import WebhookRefused, check_webhook_url

#: Signatures of image formats we recognise but do not accept (answer 415, not 400).
OTHER_IMAGE_SIGNATURES = {
    b"GIF87a": "gif",
    b"GIF89a": "gif",
    b"BM": "bmp",
    b"II*\x00": "tiff",
    b"MM\x00*": "tiff",
    b"\x00\x00\x01\x00": "ico",
    b"8BPS": "psd",
    b"\xff\x0a": "jxl",
    b"%PDF": "pdf",
}


#: What a missing image is told to send, in the request's own encoding's terms.
MISSING_IMAGE = {
    "form": f"required: a file part ({IMAGE_FORMATS_TEXT}) or an https:// URL",
    "json": f"required: a {IMAGE_FORMATS_TEXT} image as {ALLOWED_FORMS['json']}",
}
#: Form fields that may be sent several times (each adds to a list); any other is sent at most once.
REPEATABLE_FORM_FIELDS = frozenset({"appearance", "webhook_events_filter"})


def appearance_labels(count: int) -> list[str]:
    """How refusals name the appearance images: ``appearance`` when there is one (as in v1.1),
    ``appearance[k]`` (k from 0, the caller's order) when there are several."""
    return ["appearance"] if count == 1 else [f"appearance[{k}]" for k in range(count)]


def check_appearance_count(count: int, encoding: Literal["form", "json"]) -> None:
    """422 naming ``appearance`` unless 1 <= count <= MAX_APPEARANCES (``encoding``: whose terms a
    missing image is described in)."""
    if 1 <= count <= MAX_APPEARANCES:
        return
    allowed = f"1 to {MAX_APPEARANCES} appearance images"
    if count == 0:
        message = MISSING_IMAGE[encoding]
        kind: ProblemKind = "missing-part"
    else:
        message = f"{count} appearance images sent; at most {MAX_APPEARANCES} per job"
        kind = "too-many-appearances"
    problem = FieldProblem(field="appearance", message=message, allowed=allowed)
    raise ApiProblem(422, f"appearance: {message} (allowed: {allowed})", kind=kind, errors=[problem])


@dataclass
class _Parsed:
    """One request body, either encoding, before the images are checked. Images are keyed by their
    label: ``structure``, then the appearance labels (``appearance_labels``) in order."""

    raw: dict[str, bytes]
    declared: dict[str, str | None]
    params: TransferParams
    labels: list[str]  # every image label, structure first
    webhook: str | None = None
    events: list[str] | None = None
    urls: dict[str, str] = dataclasses.field(default_factory=dict)  # image label -> https URL to fetch


class RequestLimitMiddleware:
    """Refuses, before a route reads anything: more than ``max_headers`` header fields (431), and
    bodies over their limit (413): ``json_limit`` for JSON (parsed whole in memory), ``body_limit``
    for multipart uploads (spooled to disk). Checked from Content-Length before reading, and by
    counting while the body streams in (chunked uploads declare no length)."""

    def __init__(self, app: ASGIApp, body_limit: int, json_limit: int, max_headers: int) -> None:
        self.app, self.body_limit, self.json_limit, self.max_headers = (
            app,
            body_limit,
            json_limit,
            max_headers,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_headers = scope.get("headers") or []
        if len(raw_headers) > self.max_headers:
            detail = (
                f"the request has {len(raw_headers)} header fields; at most {self.max_headers} are "
                "accepted (QALIGN_MAX_HEADER_COUNT)"
            )
            response = problem_response(431, detail, kind="headers-too-large", instance=scope.get("path"))
            await response(scope, receive, send)
            return
        headers = dict(raw_headers)
        multipart = headers.get(b"content-type", b"").lower().startswith(b"multipart/")
        limit = self.body_limit if multipart else self.json_limit
        what = "request body" if multipart else "JSON body (send large images as multipart/form-data)"
        declared = headers.get(b"content-length")
        if declared is not None:
            text = declared.decode("latin-1").strip()
            status, detail = 0, ""
            if not text.isdigit():
                status, detail = 400, f"invalid Content-Length header {text[:40]!r}"
            elif int(text) > limit:
                status, detail = 413, f"{what} is {int(text)} bytes; the limit is {limit} bytes"
            if status:
                kind: ProblemKind = "too-large" if status == 413 else "bad-request"
                response = problem_response(status, detail, kind=kind, instance=scope.get("path"))
                await response(scope, receive, send)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ApiProblem(413, f"{what} is over the limit of {limit} bytes", kind="too-large")
            return message

        await self.app(scope, limited, send)


def idempotency_key(request: Request) -> str | None:
    """The Idempotency-Key header, checked against ``qalign_schema.submission``'s rule (keys are
    otherwise opaque to us)."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    key = key.strip()
    if not is_idempotency_key(key):
        raise ApiProblem(400, f"Idempotency-Key must be {IDEMPOTENCY_KEY_RULE}", kind="bad-request")
    return key


def check_webhook(url: str | None, settings: Settings) -> None:
    """422 naming webhook_url when it may not be called (SSRF policy) or webhooks are disabled."""
    if url is None:
        return
    reason = None
    if not settings.webhook_secret:
        reason = "webhooks are disabled on this service (the operator has not set QALIGN_WEBHOOK_SECRET)"
    elif len(url) > MAX_URL_LENGTH:
        reason = f"at most {MAX_URL_LENGTH} characters"
    else:
        try:
            check_webhook_url(url, settings.allowed_webhook_hosts)
        except WebhookRefused as exc:
            reason = str(exc)
    if reason is not None:
        problem = FieldProblem(field="webhook_url", message=reason)
        raise ApiProblem(422, f"webhook_url: {reason}", kind="invalid-webhook-url", errors=[problem])


async def read_submission(request: Request, settings: Settings) -> Submission:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    key = idempotency_key(request)
    if content_type == "multipart/form-data":
        parsed = await _read_form(request, settings)
    elif content_type == "application/json":
        parsed = await _read_json(request)
    else:
        raise ApiProblem(
            415,
            f"send multipart/form-data or application/json, not {content_type or 'no content type'}",
            kind="unsupported-media-type",
        )
    # Resolves the host (off the event loop); before any image URL is fetched, which costs more.
    await run_in_threadpool(check_webhook, parsed.webhook, settings)
    if parsed.urls:  # all fetched at once; the first image's refusal wins
        names = list(parsed.urls)
        fetched = await _all([run_in_threadpool(fetch_input, n, parsed.urls[n], settings) for n in names])
        for name, (data, ctype) in zip(names, fetched, strict=True):
            parsed.raw[name], parsed.declared[name] = data, ctype
    # The images decode at once (Pillow releases the GIL while decoding); the first image's refusal wins.
    checks = [
        run_in_threadpool(check_image, name, parsed.raw[name], parsed.declared.get(name), settings)
        for name in parsed.labels
    ]
    images = await _all(checks)
    return Submission(
        params=parsed.params,
        structure=images[0],
        appearances=images[1:],
        webhook_url=parsed.webhook,
        idempotency_key=key,
        webhook_events=parsed.events,
    )


_T = TypeVar("_T")


async def _all(awaitables: Sequence[Awaitable[_T]]) -> list[_T]:
    """Run concurrently; raise the first (in order) failure once all have ended."""
    outcomes = await asyncio.gather(*awaitables, return_exceptions=True)
    results: list[_T] = []
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
        results.append(outcome)
    return results


def events_filter(values: Sequence[str] | None) -> list[str] | None:
    """The validated webhook_events_filter in canonical order, or a 422 naming the field."""
    if values is None:
        return None
    unknown = sorted({v for v in values if v not in EVENT_KINDS})
    if unknown or not values:
        allowed = "a non-empty list of: " + ", ".join(EVENT_KINDS)
        why = f"unknown event(s) {', '.join(unknown)}" if unknown else "empty (omit it for every event)"
        problem = FieldProblem(field="webhook_events_filter", message=why, allowed=allowed)
        detail = f"webhook_events_filter: {why} (allowed: {allowed})"
        raise ApiProblem(422, detail, kind="invalid-parameters", errors=[problem])
    return [event for event in EVENT_KINDS if event in values]


async def _read_form(request: Request, settings: Settings) -> _Parsed:
    try:
        # One more file than allowed, so that one appearance too many is named as such (422).
        form = await request.form(max_files=MAX_APPEARANCES + 2, max_fields=64 + MAX_APPEARANCES)
    except ApiProblem:
        raise
    except Exception as exc:  # malformed multipart is the caller's error
        if "too many files" in str(exc).lower():
            check_appearance_count(MAX_APPEARANCES + 1, "form")
        raise ApiProblem(400, f"cannot parse the multipart body: {exc}", kind="bad-request") from exc
    parts = {name: [p for p in form.getlist(name) if isinstance(p, UploadFile) or p] for name in IMAGE_FIELDS}
    missing = [name for name in IMAGE_FIELDS if not parts[name]]
    if missing:
        problems = [FieldProblem(field=f, message=MISSING_IMAGE["form"]) for f in missing]
        raise ApiProblem(
            422, "; ".join(f"{p.field}: {p.message}" for p in problems), kind="missing-part", errors=problems
        )
    _check_not_repeated(form.multi_items())
    check_appearance_count(len(parts["appearance"]), "form")
    labelled = [("structure", parts["structure"][0])]
    labelled += zip(appearance_labels(len(parts["appearance"])), parts["appearance"], strict=True)
    raw: dict[str, bytes] = {}
    declared: dict[str, str | None] = {}
    urls: dict[str, str] = {}
    for label, part in labelled:
        if isinstance(part, str):  # a form field, not a file: an image URL
            urls[label] = part.strip()
            check_input_url(label, urls[label], "form")
            continue
        data = await part.read(settings.max_upload_bytes + 1)
        _check_size(label, len(data), settings)
        raw[label], declared[label] = data, part.content_type
    fields: dict[str, object] = {}
    webhook: str | None = None
    events: list[str] | None = None
    for name, value in form.multi_items():
        if name in IMAGE_FIELDS:
            continue
        if name == "webhook_events_filter" and isinstance(value, str):  # repeated or comma-separated
            events = (events or []) + [v.strip() for v in value.split(",") if v.strip()]
            continue
        if not isinstance(value, str):
            raise ApiProblem(
                422,
                f"{name}: expected a form field, got a file",
                kind="invalid-parameters",
                errors=[FieldProblem(field=name, message="expected a form field, got a file")],
            )
        if value == "":
            continue
        if name == "webhook_url":
            webhook = value
            continue
        fields[name] = [p.strip() for p in value.split(",")] if name in TUPLE_FIELDS else value
    labels = [label for label, _ in labelled]
    return _Parsed(raw, declared, _params(fields), labels, webhook, events_filter(events), urls)


def _check_not_repeated(items: Sequence[tuple[str, object]]) -> None:
    """422 naming a form field sent more than once: one value is taken, not silently the last."""
    counts = Counter(name for name, _ in items if name not in REPEATABLE_FORM_FIELDS)
    repeated = [name for name, count in counts.items() if count > 1]
    if not repeated:
        return
    problems = [
        FieldProblem(
            field=name,
            message=f"sent {counts[name]} times",
            allowed="one " + ("image" if name in IMAGE_FIELDS else "value"),
        )
        for name in repeated
    ]
    raise ApiProblem(422, describe(problems), kind="repeated-field", errors=problems)


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _refuse_repeated_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """json.loads' object hook: a key given twice in one object is refused, not silently the last."""
    counts = Counter(key for key, _ in pairs)
    for key, count in counts.items():
        if count > 1:
            raise _RepeatedKey(key)
    return dict(pairs)


async def _read_json(request: Request) -> _Parsed:
    raw_body = await request.body()
    try:
        body = json.loads(raw_body, object_pairs_hook=_refuse_repeated_keys)
    except _RepeatedKey as exc:
        message = "given more than once in one object"
        problem = FieldProblem(field=exc.key, message=message, allowed="one value")
        raise ApiProblem(422, describe([problem]), kind="repeated-field", errors=[problem]) from exc
    except RecursionError as exc:
        raise ApiProblem(400, "the JSON body is nested too deeply", kind="bad-request") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integer literals
        raise ApiProblem(400, f"the body is not valid JSON: {exc}", kind="bad-request") from exc
    if not isinstance(body, dict):
        raise ApiProblem(400, "the JSON body must be an object", kind="bad-request")
    if isinstance(body.get("appearance"), list):  # the count first: named as such, not as a list length
        check_appearance_count(len(body["appearance"]), "json")
    try:
        parsed = TransferJSONRequest.model_validate(body)
    except ValidationError as exc:
        raise validation_problem(exc) from exc
    appearances = [parsed.appearance] if isinstance(parsed.appearance, str) else parsed.appearance
    labelled = [("structure", parsed.structure)]
    labelled += zip(appearance_labels(len(appearances)), appearances, strict=True)
    raw: dict[str, bytes] = {}
    declared: dict[str, str | None] = {}
    urls: dict[str, str] = {}
    for label, given in labelled:
        value = given.strip()
        if looks_like_url(value):
            check_input_url(label, value, "json")
            urls[label] = value
        else:
            raw[label], declared[label] = _decode_base64(label, value)
    exclude = {"structure", "appearance", "webhook_url", "webhook_events_filter"}
    params = _params(parsed.model_dump(exclude=exclude, exclude_unset=True))
    events = events_filter(parsed.webhook_events_filter)
    labels = [label for label, _ in labelled]
    return _Parsed(raw, declared, params, labels, parsed.webhook_url, events, urls)


def _params(fields: dict[str, object]) -> TransferParams:
    try:
        return TransferParams.model_validate(fields)
    except ValidationError as exc:
        raise validation_problem(exc) from exc


def _decode_base64(field: str, value: str) -> tuple[bytes, str | None]:
    declared = None
    if value.startswith("data:"):
        header, sep, value = value.partition(",")
        if not sep or ";base64" not in header:
            raise ApiProblem(
                400,
                f"{field}: a data: URL must be base64-encoded (data:image/png;base64,...)",
                kind="not-an-image",
            )
        declared = header[5:].split(";")[0] or None
    try:
        return base64.b64decode("".join(value.split()), validate=True), declared
    except (binascii.Error, ValueError) as exc:
        raise ApiProblem(400, f"{field}: not valid base64 ({exc})", kind="not-an-image") from exc


def _check_size(field: str, size: int, settings: Settings) -> None:
    if size > settings.max_upload_bytes:
        raise ApiProblem(
            413, f"{field}: the file is over the limit of {settings.max_upload_bytes} bytes", kind="too-large"
        )


def check_image(field: str, data: bytes, declared_type: str | None, settings: Settings) -> tuple[bytes, str]:
    """Return (bytes, content type) of an acceptable image or raise the right 4xx ApiProblem."""
    _check_size(field, len(data), settings)
    if not data:
        raise ApiProblem(
            400,
            f"{field}: the image is empty (0 bytes); send a {IMAGE_FORMATS_TEXT} image",
            kind="not-an-image",
        )
    fmt = sniff_format(data)
    if fmt is None:
        raise _unrecognised(field, data, declared_type)
    _decode_once(field, data, fmt, settings)
    return data, f"image/{fmt}"


def _unrecognised(field: str, data: bytes, declared_type: str | None) -> ApiProblem:
    """415 for an image type we recognise but do not accept, else 400 not an image."""
    other = next((name for sig, name in OTHER_IMAGE_SIGNATURES.items() if data.startswith(sig)), None)
    if other is None and len(data) >= 12 and data[4:8] == b"ftyp":
        other = data[8:12].decode("latin-1").strip()
    declared = (declared_type or "").lower()
    # image/jpg: a common misspelling of image/jpeg, not another format.
    if declared.startswith("image/") and declared[6:] not in (*IMAGE_FORMATS, "jpg"):
        other = other or declared
    if other is not None:
        return ApiProblem(
            415,
            f"{field}: unsupported image type ({other}); allowed: {', '.join(IMAGE_FORMAT_NAMES)}",
            kind="unsupported-media-type",
        )
    return ApiProblem(400, f"{field}: not an image (send a {IMAGE_FORMATS_TEXT} file)", kind="not-an-image")


def _decode_once(field: str, data: bytes, fmt: str, settings: Settings) -> None:
    """Check the pixel count from the header (before Pillow, whose own bomb guard would refuse a
    huge image as an error of another kind), then open and decode once: the API reads each upload
    once (the worker decodes it again for the model, in its own process)."""
    try:
        check_pixel_count(data, settings.max_pixels)
    except ImageTooLargeError as exc:
        raise _too_many_pixels(field, exc.width, exc.height, settings) from exc
    bomb = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt.upper()])
        width, height = image.size
        if width * height > settings.max_pixels:  # a header check_pixel_count could not read
            raise _too_many_pixels(field, width, height, settings)
        if width < 1 or height < 1:
            raise ApiProblem(400, f"{field}: the image is {width}x{height} pixels", kind="not-an-image")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except bomb as exc:  # only when QALIGN_MAX_PIXELS is above Pillow's own limit: still too large
        raise ApiProblem(
            413,
            f"{field}: the image is too large to decode ({exc}); the limit is {settings.max_pixels} pixels",
            kind="too-large",
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        reason = decoder_complaint(exc)
        raise ApiProblem(
            400, f"{field}: the {fmt} image is corrupt or truncated: {reason}", kind="not-an-image"
        ) from exc


def _too_many_pixels(field: str, width: int, height: int, settings: Settings) -> ApiProblem:
    return ApiProblem(
        413,
        f"{field}: the image is {width}x{height} = {width * height} pixels; the limit is "
        f"{settings.max_pixels} pixels (send a smaller image)",
        kind="too-large",
    )
