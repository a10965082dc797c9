"""URL inputs: ``structure`` / ``appearance`` given as ``https://`` URLs, fetched by the API.

The fetch goes through ``service.netguard`` (every resolved address checked, the connection pinned
to it), https only, redirects followed at most ``MAX_REDIRECTS`` times with every hop checked and
pinned again, the body read only up to QALIGN_MAX_UPLOAD_BYTES, the whole fetch bounded by
QALIGN_INPUT_URL_TIMEOUT_S. Every failure is a 4xx problem naming the input; the bytes then go
through the same image validation as an upload.
"""

from __future__ import annotations

import logging
import re
import time

import httpx

from qalign_schema.params import IMAGE_MEDIA_TYPES
from qalign_schema.submission import MAX_URL_LENGTH
from service.http.problems import ApiProblem
from service.http.schemas import FieldProblem
from service.netguard import (
    NetPolicy,
    Resolver,
    UrlRefused,
    describe,
    open_pinned,
    pin,
    public_reason,
    redact_url,
    resolve,
)
from service.settings import Settings

log = logging.getLogger("qalign.inputs")
MAX_REDIRECTS = 5
#: A string with a URL scheme ("https:", "ftp:", "file:"). Base64 never contains ":", so a JSON
#: image field is a URL exactly when it matches (``data:`` URLs are handled before).
URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
ALLOWED_FORMS = {
    "json": "base64, a data: URL (data:image/png;base64,...) or an https:// URL",
    "form": "a file part or an https:// URL",
}


def looks_like_url(value: str) -> bool:
    return bool(URL_SCHEME.match(value)) and not value.startswith("data:")


def input_policy(settings: Settings, resolver: Resolver = resolve) -> NetPolicy:
    ca = settings.outbound_ca_bundle
    return NetPolicy(
        schemes=("https",),
        allow=settings.allowed_input_url_hosts,
        allow_setting="QALIGN_INPUT_URL_ALLOW_HOSTS",
        ca_bundle=str(ca) if ca else None,
        resolver=resolver,
    )


def check_input_url(field: str, url: str, encoding: str) -> None:
    """422 naming ``field`` and the allowed forms unless ``url`` is an https URL (checked before any
    fetch, so a wrong scheme never costs a connection)."""
    scheme = url.split(":", 1)[0].lower()
    if scheme != "https" or len(url) > MAX_URL_LENGTH:
        why = f"over {MAX_URL_LENGTH} characters"
        if scheme != "https":
            why = f"the {scheme}: scheme is not accepted"
        message = f"{why}; give {ALLOWED_FORMS[encoding]}"
        raise ApiProblem(
            422,
            f"{field}: {message}",
            kind="invalid-input-url",
            errors=[FieldProblem(field=field, message=message, allowed=ALLOWED_FORMS[encoding])],
        )


def fetch_input(
    field: str, url: str, settings: Settings, resolver: Resolver = resolve
) -> tuple[bytes, str | None]:
    """(bytes, declared content type) of the image at ``url``, or the 4xx ApiProblem naming ``field``."""
    policy = input_policy(settings, resolver)
    limit, budget = settings.max_upload_bytes, settings.input_url_timeout_s
    deadline = time.monotonic() + budget
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        try:
            pinned = pin(current, policy, name=field)
        except UrlRefused as exc:
            raise ApiProblem(
                422,
                f"{exc}",
                kind="invalid-input-url",
                errors=[FieldProblem(field=field, message=str(exc), allowed="https URLs of public hosts")],
            ) from exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timed_out(field, url, budget)
        try:
            accept = {"Accept": ", ".join(IMAGE_MEDIA_TYPES)}
            with open_pinned(pinned, "GET", policy, timeout=remaining, headers=accept) as answer:
                if answer.is_redirect and "location" in answer.headers:
                    try:
                        current = str(pinned.url.join(answer.headers["location"]))
                    except (httpx.InvalidURL, ValueError) as exc:
                        reason = f"{_show(current)} redirected to an invalid URL ({exc})"
                        raise _failed(field, reason) from exc
                    continue
                if not 200 <= answer.status_code < 300:
                    raise _failed(field, f"{_show(current)} answered HTTP {answer.status_code}")
                declared = answer.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > limit:
                    raise _too_large(field, limit)
                data = bytearray()
                for chunk in answer.iter_bytes():
                    data += chunk
                    if len(data) > limit:  # stop reading: the rest never leaves the sender's buffers
                        raise _too_large(field, limit)
                    if time.monotonic() > deadline:
                        raise _timed_out(field, url, budget)
                ctype = answer.headers.get("content-type")
                return bytes(data), ctype.split(";")[0].strip() if ctype else None
        except httpx.TimeoutException as exc:
            raise _timed_out(field, url, budget) from exc
        except httpx.HTTPError as exc:
            # The caller learns a category; the error text (what answered, which certificate) is logged.
            log.info("URL input fetch failed", extra={"url": _show(current), "error": describe(exc)})
            raise _failed(field, f"could not fetch {_show(current)}: {public_reason(exc)}") from exc
    raise _failed(field, f"{_show(url)} redirected more than {MAX_REDIRECTS} times")


def _show(url: str) -> str:
    """The URL without user information and query (signed URLs carry credentials there)."""
    return redact_url(url)


def _failed(field: str, reason: str) -> ApiProblem:
    return ApiProblem(
        422,
        f"{field}: the URL could not be fetched: {reason}",
        kind="input-fetch-failed",
        errors=[FieldProblem(field=field, message=f"the URL could not be fetched: {reason}")],
    )


def _timed_out(field: str, url: str, budget: float) -> ApiProblem:
    limit = f"{budget:g} s, QALIGN_INPUT_URL_TIMEOUT_S"
    return _failed(field, f"{_show(url)} took longer than the time limit ({limit})")


def _too_large(field: str, limit: int) -> ApiProblem:
    return ApiProblem(
        413,
        f"{field}: the fetched file is over the limit of {limit} bytes",
        kind="too-large",
        errors=[FieldProblem(field=field, message=f"over the limit of {limit} bytes")],
    )
