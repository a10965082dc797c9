"""Garbage in, problem details out: a corpus of bad requests, and a property test over parameters.

Every bad request must get a 4xx RFC 9457 body (never a 5xx) and the service must keep working.
One app (embedded, fake pipeline) serves the whole module, so the corpus hits the same process.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from net_helpers import LOOPBACK_ONLY, namespace_launcher
from PIL import Image
from pydantic import ValidationError
from svc_helpers import FakePipeline, encode, fake_colour, wait_for
from testkit import assert_problem

from qalign_core.params import TransferParams
from service.http.problems import field_problems
from service.settings import Settings

# Names non-loopback addresses (targets the checks must refuse or never reach): every test
# here runs inside a loopback-only network namespace (tests/net_helpers.py).
pytestmark = LOOPBACK_ONLY
test_in_loopback_only_namespace = namespace_launcher(__file__)

MAX_UPLOAD = 300_000
MAX_REQUEST = 1_000_000
MAX_PIXELS = 4_000_000


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.app import create_app

    config = Settings(
        _env_file=None,
        model="fake",
        device="cpu",
        redis_url=None,
        data_dir=tmp_path_factory.mktemp("corpus") / "data",
        progress_interval=0.0,
        cancel_check_interval=0.0,
        readiness_cache_s=0.0,
        max_upload_bytes=MAX_UPLOAD,
        max_request_bytes=MAX_REQUEST,
        max_pixels=MAX_PIXELS,
        max_queue_depth=10_000,
        webhook_secret="corpus-secret",
    )
    pipeline = FakePipeline()
    with TestClient(create_app(config, pipeline_factory=lambda _s: pipeline)) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200)
        yield client


@pytest.fixture(scope="module")
def png() -> bytes:
    return encode(Image.new("RGB", (32, 24), (10, 200, 30)), "PNG")


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return encode(Image.new("RGB", (32, 24), (200, 20, 30)), "JPEG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with almost no pixel data: the size must be
    refused from the header, before anything is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def multipart(structure, appearance, **fields):
    files = {}
    if structure is not None:
        files["structure"] = structure if isinstance(structure, tuple) else ("s.png", structure, "image/png")
    if appearance is not None:
        files["appearance"] = (
            appearance if isinstance(appearance, tuple) else ("a.jpg", appearance, "image/jpeg")
        )
    return {"files": files or None, "data": {k: str(v) for k, v in fields.items()} or None}


def raw_json(text: str | bytes) -> dict:
    return {"content": text, "headers": {"content-type": "application/json"}}


def json_body(png: bytes, jpeg: bytes, **fields) -> dict:
    body = {"structure": b64(png), "appearance": b64(jpeg), **fields}
    return raw_json(json.dumps(body))


def chunks(total: int):
    for _ in range(total // 65536 + 1):
        yield b"x" * 65536


# name -> (method, path, builder(png, jpeg) -> request kwargs, expected status)
CORPUS = {
    "zero-byte file": ("POST", "/transfer", lambda p, j: multipart(b"", j), 400),
    "truncated png": ("POST", "/transfer", lambda p, j: multipart(p[: len(p) // 2], j), 400),
    "truncated jpeg": ("POST", "/transfer", lambda p, j: multipart(p, j[: len(j) // 3]), 400),
    "png signature only": ("POST", "/transfer", lambda p, j: multipart(p[:8], j), 400),
    "text named .png": (
        "POST",
        "/transfer",
        lambda p, j: multipart(("cat.png", b"hello, world", "image/png"), j),
        400,
    ),
    "html named .jpg": (
        "POST",
        "/transfer",
        lambda p, j: multipart(p, ("a.jpg", b"<html><body>hi</body></html>", "image/jpeg")),
        400,
    ),
    "decompression bomb (too many pixels: 413, as at any size)": (
        "POST",
        "/transfer",
        lambda p, j: multipart(encode(Image.new("1", (20000, 20000)), "PNG"), j),
        413,
    ),
    "huge dimensions (header)": (
        "POST",
        "/transfer",
        lambda p, j: multipart(png_header_only(5000, 5000), j),
        413,
    ),
    "zero dimensions (header)": ("POST", "/transfer", lambda p, j: multipart(png_header_only(0, 0), j), 400),
    "gif": ("POST", "/transfer", lambda p, j: multipart(p, encode(Image.new("RGB", (8, 8)), "GIF")), 415),
    "bmp": ("POST", "/transfer", lambda p, j: multipart(encode(Image.new("RGB", (8, 8)), "BMP"), j), 415),
    "tiff": ("POST", "/transfer", lambda p, j: multipart(encode(Image.new("RGB", (8, 8)), "TIFF"), j), 415),
    "file over the size limit": ("POST", "/transfer", lambda p, j: multipart(p + b"\0" * MAX_UPLOAD, j), 413),
    "missing appearance part": ("POST", "/transfer", lambda p, j: multipart(p, None), 422),
    "no file parts": ("POST", "/transfer", lambda p, j: {"files": {"x": ("x", b"", "text/plain")}}, 422),
    "multipart: a file under another name": (
        "POST",
        "/transfer",
        lambda p, j: {
            "files": [("structure", ("s.png", p)), ("appearance", ("a.png", p)), ("extra", ("e.png", p))]
        },
        422,
    ),
    "multipart: nine appearances": (
        "POST",
        "/transfer",
        lambda p, j: {"files": [("structure", ("s.png", p))] + [("appearance", ("a.jpg", j))] * 9},
        422,
    ),
    "multipart: twenty appearances": (
        "POST",
        "/transfer",
        lambda p, j: {"files": [("structure", ("s.png", p))] + [("appearance", ("a.jpg", j))] * 20},
        422,
    ),
    "multipart: two structures": (
        "POST",
        "/transfer",
        lambda p, j: {
            "files": [("structure", ("s.png", p)), ("structure", ("s.png", p)), ("appearance", ("a", j))]
        },
        422,
    ),
    "multipart: second appearance not an image": (
        "POST",
        "/transfer",
        lambda p, j: {
            "files": [
                ("structure", ("s.png", p)),
                ("appearance", ("a.jpg", j)),
                ("appearance", ("b.png", b"hi")),
            ]
        },
        400,
    ),
    "json: empty appearance list": (
        "POST",
        "/transfer",
        lambda p, j: raw_json(json.dumps({"structure": b64(p), "appearance": []})),
        422,
    ),
    "json: nine appearances": (
        "POST",
        "/transfer",
        lambda p, j: raw_json(json.dumps({"structure": b64(p), "appearance": [b64(j)] * 9})),
        422,
    ),
    "json: appearance list of numbers": (
        "POST",
        "/transfer",
        lambda p, j: raw_json(json.dumps({"structure": b64(p), "appearance": [1, 2]})),
        422,
    ),
    "json: second appearance not base64": (
        "POST",
        "/transfer",
        lambda p, j: raw_json(json.dumps({"structure": b64(p), "appearance": [b64(j), "%%%"]})),
        400,
    ),
    "parameter sent as a file": (
        "POST",
        "/transfer",
        lambda p, j: {"files": [("structure", ("s.png", p)), ("steps", ("s.txt", b"10"))]},
        422,
    ),
    "multipart without boundary": (
        "POST",
        "/transfer",
        lambda p, j: {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}},
        400,
    ),
    "multipart garbage body": (
        "POST",
        "/transfer",
        lambda p, j: {
            "content": b"\x00\xff" * 50,
            "headers": {"content-type": "multipart/form-data; boundary=zz"},
        },
        400,
    ),
    "empty body, no content type": ("POST", "/transfer", lambda p, j: {"content": b""}, 415),
    "wrong content type": (
        "POST",
        "/transfer",
        lambda p, j: {"content": p, "headers": {"content-type": "image/png"}},
        415,
    ),
    "form-urlencoded": ("POST", "/transfer", lambda p, j: {"data": {"steps": "10"}}, 415),
    "multipart: size not a multiple of 32": (
        "POST",
        "/transfer",
        lambda p, j: multipart(p, j, size=100),
        422,
    ),
    "multipart: contrast inf": (
        "POST",
        "/transfer",
        lambda p, j: multipart(p, j, contrast_strength="inf"),
        422,
    ),
    "multipart: steps reversed range": (
        "POST",
        "/transfer",
        lambda p, j: multipart(p, j, align_steps_fine="8,2"),
        422,
    ),
    "multipart: step range not numbers": (
        "POST",
        "/transfer",
        lambda p, j: multipart(p, j, align_steps_fine="a,b,c"),
        422,
    ),
    "multipart: unknown field": ("POST", "/transfer", lambda p, j: multipart(p, j, colour="blue"), 422),
    "json: empty body": ("POST", "/transfer", lambda p, j: raw_json(b""), 400),
    "json: truncated": ("POST", "/transfer", lambda p, j: raw_json(b'{"structure": "iVBOR'), 400),
    "json: not json at all": ("POST", "/transfer", lambda p, j: raw_json(p), 400),
    "json: array body": ("POST", "/transfer", lambda p, j: raw_json(b"[1, 2, 3]"), 400),
    "json: deep nesting": ("POST", "/transfer", lambda p, j: raw_json(b"[" * 100_000 + b"]" * 100_000), 400),
    "json: deep nesting in a field": (
        "POST",
        "/transfer",
        lambda p, j: raw_json(b'{"structure": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"),
        400,
    ),
    "json: huge array": (
        "POST",
        "/transfer",
        lambda p, j: raw_json(json.dumps({"structure": list(range(100_000)), "appearance": "x"})),
        422,
    ),
    "json: 5000-digit integer": (
        "POST",
        "/transfer",
        lambda p, j: raw_json(b'{"seed": ' + b"9" * 5000 + b"}"),
        400,
    ),
    "json: bad base64": (
        "POST",
        "/transfer",
        lambda p, j: raw_json(json.dumps({"structure": "%%%", "appearance": "!!"})),
        400,
    ),
    "json: base64 of text": ("POST", "/transfer", lambda p, j: json_body(b"plain text, no image", j), 400),
    "json: data url without base64": (
        "POST",
        "/transfer",
        lambda p, j: raw_json(json.dumps({"structure": "data:image/png,abc", "appearance": b64(j)})),
        400,
    ),
    "json: data url with bad payload": (
        "POST",
        "/transfer",
        lambda p, j: raw_json(json.dumps({"structure": "data:image/png;base64,@@@@", "appearance": b64(j)})),
        400,
    ),
    "json: image as number": (
        "POST",
        "/transfer",
        lambda p, j: raw_json(json.dumps({"structure": 5, "appearance": 6})),
        422,
    ),
    "json: missing appearance": (
        "POST",
        "/transfer",
        lambda p, j: raw_json(json.dumps({"structure": b64(p)})),
        422,
    ),
    "json: unknown field": ("POST", "/transfer", lambda p, j: json_body(p, j, shoe_size=44), 422),
    "json: NaN parameter": (
        "POST",
        "/transfer",
        lambda p, j: raw_json(
            json.dumps({"structure": b64(p), "appearance": b64(j), "swap_guidance_scale": float("nan")})
        ),
        422,
    ),
    "json: negative steps": ("POST", "/transfer", lambda p, j: json_body(p, j, steps=-5), 422),
    "json: huge seed": ("POST", "/transfer", lambda p, j: json_body(p, j, seed=10**30), 422),
    "json: wrong type": ("POST", "/transfer", lambda p, j: json_body(p, j, steps="ten"), 422),
    "json: skip_steps over 99": (
        "POST",
        "/transfer",
        lambda p, j: json_body(p, j, steps=10, skip_steps=100),
        422,
    ),
    "json: null image": (
        "POST",
        "/transfer",
        lambda p, j: raw_json(json.dumps({"structure": None, "appearance": None})),
        422,
    ),
    "json: webhook to metadata address": (
        "POST",
        "/transfer",
        lambda p, j: json_body(p, j, webhook_url="http://169.254.169.254/latest/meta-data"),
        422,
    ),
    "json: webhook to loopback": (
        "POST",
        "/transfer",
        lambda p, j: json_body(p, j, webhook_url="http://127.0.0.1:9/"),
        422,
    ),
    "json: webhook not http": (
        "POST",
        "/transfer",
        lambda p, j: json_body(p, j, webhook_url="file:///etc/passwd"),
        422,
    ),
    "multipart: webhook to private address": (
        "POST",
        "/transfer",
        lambda p, j: multipart(p, j, webhook_url="http://10.1.2.3/hook"),
        422,
    ),
    "bad Idempotency-Key": (
        "POST",
        "/transfer",
        lambda p, j: {
            **json_body(p, j),
            "headers": {"content-type": "application/json", "idempotency-key": "x" * 300},
        },
        400,
    ),
    "oversized body (Content-Length)": (
        "POST",
        "/transfer",
        lambda p, j: {"content": b"x" * (MAX_REQUEST + 1), "headers": {"content-type": "application/json"}},
        413,
    ),
    "oversized body (streamed, no length)": (
        "POST",
        "/transfer",
        lambda p, j: {"content": chunks(MAX_REQUEST + 1), "headers": {"content-type": "application/json"}},
        413,
    ),
    "oversized multipart (streamed)": (
        "POST",
        "/transfer",
        lambda p, j: {
            "content": chunks(MAX_REQUEST + 1),
            "headers": {"content-type": "multipart/form-data; boundary=a"},
        },
        413,
    ),
    "wrong method": ("PUT", "/transfer", lambda p, j: {}, 405),
    "GET on /transfer": ("GET", "/transfer", lambda p, j: {}, 405),
    "job id not an id": ("GET", "/jobs/..%2F..%2Fetc%2Fpasswd", lambda p, j: {}, 404),
    "unknown job result": ("GET", "/jobs/0123456789abcdef0123456789abcdef/result", lambda p, j: {}, 404),
    "cancel unknown job": ("DELETE", "/jobs/0123456789abcdef0123456789abcdef", lambda p, j: {}, 404),
}


@pytest.mark.parametrize("case", list(CORPUS), ids=list(CORPUS))
def test_bad_request_gets_a_4xx_problem(app_client, png, jpeg, case):
    method, path, build, status = CORPUS[case]
    response = app_client.request(method, path, **build(png, jpeg))
    body = assert_problem(response, status)
    assert body["type"].startswith("/problems/"), "every refusal has a problem type, never about:blank"
    if status == 422 and case.startswith(("json:", "multipart:")) and "webhook" not in case:
        assert body.get("errors"), "parameter refusals name the field"


def test_refusals_name_the_field_and_the_limit(app_client, png, jpeg):
    body = assert_problem(app_client.post("/transfer", **json_body(png, jpeg, steps=-5)), 422)
    assert body["errors"][0]["field"] == "steps" and body["errors"][0]["allowed"] == ">= 2 and <= 999"
    body = assert_problem(app_client.post("/transfer", **multipart(png_header_only(5000, 5000), jpeg)), 413)
    assert "structure" in body["detail"] and str(MAX_PIXELS) in body["detail"]
    body = assert_problem(app_client.post("/transfer", **multipart(png + b"\0" * MAX_UPLOAD, jpeg)), 413)
    assert str(MAX_UPLOAD) in body["detail"]
    body = assert_problem(
        app_client.post("/transfer", **json_body(png, jpeg, webhook_url="http://169.254.169.254/")), 422
    )
    assert body["errors"][0]["field"] == "webhook_url" and "link-local" in body["detail"]
    body = assert_problem(
        app_client.post("/transfer", **raw_json(json.dumps({"structure": "%%", "appearance": "x"}))), 400
    )
    assert body["detail"].startswith("structure:") and "base64" in body["detail"]


def test_appearance_count_refusals_name_the_allowed_range(app_client, png, jpeg):
    nine = {"files": [("structure", ("s.png", png))] + [("appearance", ("a.jpg", jpeg))] * 9}
    for request in (nine, raw_json(json.dumps({"structure": b64(png), "appearance": [b64(jpeg)] * 9}))):
        body = assert_problem(app_client.post("/transfer", **request), 422)
        assert body["type"] == "/problems/too-many-appearances"
        assert body["errors"] == [
            {
                "field": "appearance",
                "message": "9 appearance images sent; at most 8 per job",
                "allowed": "1 to 8 appearance images",
            }
        ]
    body = assert_problem(
        app_client.post("/transfer", **raw_json(json.dumps({"structure": b64(png), "appearance": []}))), 422
    )
    assert (
        body["errors"][0]["field"] == "appearance"
        and body["errors"][0]["allowed"] == "1 to 8 appearance images"
    )
    # Each image is checked and named by its position when there are several.
    bad = {
        "files": [
            ("structure", ("s.png", png)),
            ("appearance", ("a.jpg", jpeg)),
            ("appearance", ("b", b"hi")),
        ]
    }
    assert assert_problem(app_client.post("/transfer", **bad), 400)["detail"].startswith("appearance[1]:")
    body = json.dumps({"structure": b64(png), "appearance": [b64(jpeg), "data:image/png;base64,@@"]})
    assert assert_problem(app_client.post("/transfer", **raw_json(body)), 400)["detail"].startswith(
        "appearance[1]:"
    )


def test_an_unreadable_image_is_named_without_python_object_reprs(app_client, png, jpeg):
    """The issue's case: a PNG signature followed by a 0x10 header answered "cannot identify image
    file <_io.BytesIO object at 0x7f...>"."""
    broken = b"\x89PNG\r\n\x1a\n" + b"\x10" * 40
    for request in (multipart(broken, jpeg), json_body(broken, jpeg)):
        body = assert_problem(app_client.post("/transfer", **request), 400)
        assert body["type"] == "/problems/not-an-image"
        assert body["detail"] == "structure: the png image is corrupt or truncated: its header cannot be read"
        assert " at 0x" not in body["detail"] and "<" not in body["detail"]


def test_a_missing_image_is_described_in_the_requests_own_terms(app_client, png):
    body = assert_problem(
        app_client.post("/transfer", **raw_json(json.dumps({"structure": b64(png), "appearance": []}))), 422
    )
    (problem,) = body["errors"]
    assert body["type"] == "/problems/missing-part" and problem["field"] == "appearance"
    assert "base64" in problem["message"] and "https:// URL" in problem["message"]
    assert "file part" not in body["detail"], "no multipart wording for a JSON request"
    form = assert_problem(app_client.post("/transfer", **multipart(png, None)), 422)
    assert form["type"] == "/problems/missing-part" and "a file part" in form["detail"]
    assert "base64" not in form["detail"]


def test_a_repeated_structure_part_or_scalar_field_is_a_422_naming_it(app_client, png, jpeg):
    structure, appearance = ("structure", ("s.png", png)), ("appearance", ("a.jpg", jpeg))
    two_structures = {"files": [structure, structure, appearance]}
    body = assert_problem(app_client.post("/transfer", **two_structures), 422)
    assert body["type"] == "/problems/repeated-field"
    assert body["errors"] == [{"field": "structure", "message": "sent 2 times", "allowed": "one image"}]

    files = {"structure": ("s.png", png, "image/png"), "appearance": ("a.jpg", jpeg, "image/jpeg")}
    steps_twice = app_client.post("/transfer", files=files, data={"steps": ["2", "3"], "seed": "1"})
    body = assert_problem(steps_twice, 422)  # -F steps=2 -F steps=3: not silently the last value
    assert body["type"] == "/problems/repeated-field"
    assert body["errors"] == [{"field": "steps", "message": "sent 2 times", "allowed": "one value"}]
    assert body["detail"] == "steps: sent 2 times (allowed: one value)"

    text = f'{{"structure": "{b64(png)}", "appearance": "{b64(jpeg)}", "steps": 2, "steps": 3}}'
    body = assert_problem(app_client.post("/transfer", **raw_json(text)), 422)
    assert body["type"] == "/problems/repeated-field" and body["errors"][0]["field"] == "steps"

    # Fields meant to repeat still do: several appearances, several webhook events.
    events = app_client.post(
        "/transfer",
        files=[structure, appearance, ("appearance", ("b.png", png))],
        data={"webhook_events_filter": ["start", "completed"], "steps": "2"},
    )
    assert events.status_code == 202, events.text


@pytest.mark.parametrize("encoding", ["multipart", "json", "json one-item list"])
def test_several_appearances_give_one_result_each_in_order(app_client, png, jpeg, encoding):
    images = [encode(Image.new("RGB", (8, 8), (k * 60, 10, 10)), "PNG") for k in range(3)]
    if encoding == "multipart":
        files = [("structure", ("s.png", png))] + [
            ("appearance", (f"{k}.png", im)) for k, im in enumerate(images)
        ]
        request = {"files": files, "data": {"steps": "10"}}
    else:
        images = images[:1] if encoding == "json one-item list" else images
        request = raw_json(
            json.dumps({"structure": b64(png), "appearance": [b64(i) for i in images], "steps": 10})
        )
    response = app_client.post("/transfer", **request)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert response.json()["appearances"] == len(images)
    done = wait_for(lambda: (j := app_client.get(f"/jobs/{job_id}").json())["status"] == "succeeded" and j)
    assert [r["index"] for r in done["results"]] == list(range(len(images)))
    assert done["result"] == done["results"][0]
    for k in range(len(images)):
        served = Image.open(io.BytesIO(app_client.get(f"/jobs/{job_id}/results/{k}").content)).convert("RGB")
        assert served.getpixel((0, 0)) == fake_colour(k)  # the fake colours result k by its position
    assert (
        app_client.get(f"/jobs/{job_id}/result").content
        == app_client.get(f"/jobs/{job_id}/results/0").content
    )


def test_service_still_answers_after_the_corpus(app_client, png, jpeg):
    """Runs after the corpus (module order): a valid submission is accepted and completes."""
    assert app_client.get("/healthz").status_code == 200
    response = app_client.post("/transfer", **json_body(png, jpeg, steps=10, skip_steps=2))
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    done = wait_for(lambda: (j := app_client.get(f"/jobs/{job_id}").json())["status"] == "succeeded" and j)
    # The 32x24 (4:3) structure keeps its shape: longer side 64, the shorter one rounded to the unit.
    assert Image.open(io.BytesIO(app_client.get(f"/jobs/{job_id}/result").content)).size == (64, 48)
    assert done["output"] == {
        "width": 64,
        "height": 48,
        "aspect_clamped": False,
        "grid_width": 64,
        "grid_height": 48,
        "crop": None,
    }
    assert done["params"]["steps"] == 10


# ------------------------------------------------------------------------------ property test
numbers = st.one_of(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "ten", "1e3", "0x10", True, None, [1, 2]]),
)
PARAM_VALUES = {
    "method": st.one_of(st.sampled_from(["qalign", "cross_image", "magic", ""]), numbers),
    "steps": st.one_of(st.integers(min_value=-5, max_value=1200), numbers),
    "skip_steps": st.one_of(st.integers(min_value=-5, max_value=1100), numbers),
    "seed": st.one_of(st.integers(min_value=-10, max_value=2**33), numbers),
    "swap_guidance_scale": st.one_of(st.floats(min_value=-5, max_value=50), numbers),
    "contrast_strength": st.one_of(st.floats(min_value=-1, max_value=12), numbers),
    "size": st.one_of(st.sampled_from([64, 128, 192, 100, 0, 2048, None]), numbers),
    "output_format": st.sampled_from(["png", "jpeg", "webp", "gif", 5]),
    "adain": st.one_of(st.booleans(), st.sampled_from(["yes", 2, None])),
    "align_steps_fine": st.one_of(
        st.tuples(st.integers(-5, 1100), st.integers(-5, 1100)).map(list), st.sampled_from(["1,2", [1], None])
    ),
    "prompt": st.one_of(st.text(max_size=30), st.sampled_from(["x" * 2000, 7])),
    "bogus_field": st.integers(),
}


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    params=st.dictionaries(st.sampled_from(sorted(PARAM_VALUES)), st.none(), max_size=5).flatmap(
        lambda keys: st.fixed_dictionaries({k: PARAM_VALUES[k] for k in keys})
    )
)
def test_parameters_property(app_client, png, jpeg, params):
    """Valid parameters -> 202; invalid -> 422 naming exactly the invalid fields; never a 5xx."""
    body = {"structure": b64(png), "appearance": b64(jpeg), **params}
    response = app_client.post("/transfer", **raw_json(json.dumps(body)))
    assert response.status_code < 500, response.text
    try:
        TransferParams.model_validate(params)
    except ValidationError as exc:
        expected = {p.field for p in field_problems(exc)}
        problem = assert_problem(response, 422)
        assert {e["field"] for e in problem["errors"]} == expected
        for field in expected:
            assert field in problem["detail"]
    else:
        assert response.status_code == 202, response.text
