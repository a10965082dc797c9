"""The HTTP contract against the embedded app (fake pipeline; the real one runs in tests/integration)."""

from __future__ import annotations

import base64
import io
import re
import threading
from typing import get_args

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from svc_helpers import FakePipeline, encode, wait_for
from testkit import assert_problem, poll, submit

from qalign_schema.jobs import ERROR_TYPES, ErrorType
from qalign_schema.params import ADAIN_MODES, MAX_APPEARANCES, MAX_STEPS, TransferParams
from qalign_schema.problems import PROBLEM_KINDS
from qalign_schema.submission import EVENT_KINDS, IDEMPOTENCY_KEY_MAX_LENGTH, MAX_URL_LENGTH


def test_multipart_submit_poll_download(client, small_images, fake_pipeline):
    response = submit(client, small_images, steps=10, skip_steps=3, align_steps_fine="2, 8", adain="none")
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['id']}"
    assert job["status"] == "queued" and job["stage"] == "queued" and job["result"] is None
    assert job["params"]["align_steps_fine"] == [2, 8] and job["params"]["adain"] == "none"

    done = poll(client, job["id"])
    assert done["status"] == "succeeded" and done["stage"] == "done" and done["progress"] == 1.0
    assert done["params"]["size"] == 64, "effective params carry the resolved size"
    # The 96x64 (3:2) structure keeps its shape: the longer side is the size, the shorter one is
    # rounded to the (fake) model's unit of 8 px.
    assert done["result"] == {
        "index": 0,
        "url": f"http://testserver/jobs/{job['id']}/result",
        "content_type": "image/png",
        "width": 64,
        "height": 40,
        "expires_at": None,
        "adain_applied": "plain",
        "object_masks_found": False,
    }
    assert done["results"] == [done["result"]] and done["appearances"] == 1
    assert done["output"] == {
        "width": 64,
        "height": 40,
        "aspect_clamped": False,
        "grid_width": 64,
        "grid_height": 40,
        "crop": None,
    }
    assert done["metrics"]["rows_per_step"] == 4
    assert done["metrics"]["total_s"] == 0.04 and done["metrics"]["queue_s"] >= 0
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    # The worker received the uploaded bytes, not something re-encoded.
    assert fake_pipeline.calls[0][0] == small_images[0] and fake_pipeline.calls[0][1] == [small_images[1]]

    result = client.get(done["result"]["url"])
    assert result.status_code == 200 and result.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(result.content)).size == (64, 40)


def test_json_submit_with_plain_and_data_url_base64(client, small_images):
    body = {
        "structure": base64.b64encode(small_images[0]).decode(),
        "appearance": "data:image/jpeg;base64," + base64.b64encode(small_images[1]).decode(),
        "steps": 12,
        "skip_steps": 3,
        "align_steps_coarse": [1, 5],
        "output_format": "webp",
        "size": 128,
    }
    response = client.post("/transfer", json=body)
    assert response.status_code == 202, response.text
    done = poll(client, response.json()["id"])
    assert done["result"]["content_type"] == "image/webp" and done["result"]["width"] == 128
    image = Image.open(io.BytesIO(client.get(f"/jobs/{done['id']}/result").content))
    assert image.format == "WEBP" and image.size == (128, 88)


@pytest.mark.parametrize(
    ("fields", "field", "allowed"),
    [
        ({"steps": 1000}, "steps", ">= 2 and <= 999"),
        ({"skip_steps": 100}, "skip_steps", ">= 0 and <= 99"),
        ({"size": 100}, "size", ">= 64 and <= 1536 and a multiple of 32"),
        ({"method": "magic"}, "method", "one of qalign, cross_image"),
        ({"adain": "true"}, "adain", "one of masked, plain, none"),  # the first version's boolean
        ({"contrast_strength": "abc"}, "contrast_strength", "> 0.0 and <= 10.0"),
        ({"bogus": 1}, "bogus", None),
    ],
)
def test_parameter_out_of_range_is_422_naming_field_and_range(client, small_images, fields, field, allowed):
    body = assert_problem(submit(client, small_images, **fields), 422)
    assert body["errors"][0]["field"] == field
    assert body["errors"][0].get("allowed") == allowed
    assert field in body["detail"]


def test_a_bad_range_is_422_naming_its_field(client, small_images):
    body = assert_problem(submit(client, small_images, align_steps_fine="50, 10"), 422)
    assert body["errors"][0]["field"] == "align_steps_fine"
    assert "0 <= start <= end <= 100" in body["detail"]


def test_changing_only_steps_is_accepted(client, small_images):
    """The schedule scales with steps, so no other field has to change with it."""
    for steps in (2, 20, 999):
        response = submit(client, small_images, steps=steps)
        assert response.status_code == 202, response.text
        assert response.json()["params"]["skip_steps"] == 32


def test_json_parameter_errors_are_422(client, small_images):
    b64 = base64.b64encode(small_images[0]).decode()
    body = assert_problem(
        client.post("/transfer", json={"structure": b64, "appearance": b64, "seed": -1}), 422
    )
    assert body["errors"][0]["field"] == "seed" and body["errors"][0]["allowed"] == ">= 0 and <= 4294967295"
    body = assert_problem(client.post("/transfer", json={"structure": b64}), 422)
    assert body["errors"][0]["field"] == "appearance"


def test_missing_part_is_422(client, small_images):
    response = client.post("/transfer", files={"structure": ("s.png", small_images[0], "image/png")})
    body = assert_problem(response, 422)
    assert body["errors"] == [
        {"field": "appearance", "message": "required: a file part (PNG, JPEG or WebP) or an https:// URL"}
    ]


def test_not_an_image_is_400(client, small_images):
    body = assert_problem(submit(client, (b"just some text, not pixels", small_images[1])), 400)
    assert body["detail"].startswith("structure: not an image")


def test_corrupt_image_is_400(client, small_images):
    body = assert_problem(submit(client, (small_images[0], small_images[1][:300])), 400)
    assert body["detail"].startswith("appearance:") and "corrupt" in body["detail"]


def test_unsupported_image_type_is_415(client, small_images):
    gif = encode(Image.new("RGB", (8, 8)), "GIF")
    body = assert_problem(submit(client, (small_images[0], gif)), 415)
    assert "gif" in body["detail"] and "PNG, JPEG, WebP" in body["detail"]


def test_unsupported_content_type_is_415(client):
    assert_problem(client.post("/transfer", content=b"x", headers={"content-type": "text/plain"}), 415)


def test_bad_json_and_bad_base64_are_400(client):
    assert_problem(client.post("/transfer", content=b"{", headers={"content-type": "application/json"}), 400)
    body = assert_problem(client.post("/transfer", json={"structure": "%%%", "appearance": "%%%"}), 400)
    assert "base64" in body["detail"]


def test_limits_are_413(make_client, embedded_settings, small_images):
    client = make_client(embedded_settings.model_copy(update={"max_upload_bytes": 1000}))
    assert "over the limit of 1000 bytes" in assert_problem(submit(client, small_images), 413)["detail"]
    client = make_client(embedded_settings.model_copy(update={"max_pixels": 96 * 64 - 1}))
    assert "pixels" in assert_problem(submit(client, small_images), 413)["detail"]


def test_decompression_bomb_is_refused(client, small_images):
    bomb = encode(Image.new("1", (20000, 20000)), "PNG")  # 400 M pixels in a few kB
    response = submit(client, (bomb, small_images[1]))
    assert response.status_code in (400, 413)
    assert_problem(response, response.status_code)


def test_unknown_job_and_route_are_404_problems(client):
    assert_problem(client.get("/jobs/0123456789abcdef0123456789abcdef"), 404)
    assert_problem(client.get("/jobs/../../etc/passwd"), 404)
    assert_problem(client.delete("/jobs/nope"), 404)
    assert_problem(client.get("/jobs/nope/result"), 404)
    assert_problem(client.get("/no/such/route"), 404)


def test_wrong_method_names_the_allowed_ones(client):
    response = client.put("/transfer")
    body = assert_problem(response, 405)
    assert response.headers["Allow"] == "POST"
    assert body["detail"] == "/transfer does not take PUT; allowed: POST"
    assert body["type"].endswith("/method-not-allowed")


def test_result_is_409_while_running_and_cancel_stops_running_job(make_client, small_images):
    pipeline = FakePipeline(gate=threading.Event())
    client = make_client(pipeline=pipeline)
    job_id = submit(client, small_images).json()["id"]
    assert pipeline.running.wait(10)
    running = client.get(f"/jobs/{job_id}").json()
    assert running["status"] == "running" and running["stage"] == "denoising"
    assert_problem(client.get(f"/jobs/{job_id}/result"), 409)

    response = client.delete(f"/jobs/{job_id}")
    assert response.status_code == 202 and response.json()["status"] == "running"
    done = poll(client, job_id)
    assert done["status"] == "canceled" and done["result"] is None and done["finished_at"]
    assert_problem(client.get(f"/jobs/{job_id}/result"), 409)


def test_cancel_queued_job_never_runs(make_client, small_images):
    pipeline = FakePipeline(gate=threading.Event())
    client = make_client(pipeline=pipeline)
    first = submit(client, small_images).json()["id"]
    assert pipeline.running.wait(10)
    second = submit(client, small_images, seed=7).json()["id"]
    response = client.delete(f"/jobs/{second}")
    assert response.status_code == 200 and response.json()["status"] == "canceled"
    pipeline.gate.set()
    assert poll(client, first)["status"] == "succeeded"
    assert len(pipeline.calls) == 1, "the canceled job must never reach the pipeline"
    final = client.get(f"/jobs/{second}").json()
    assert final["status"] == "canceled" and final["started_at"] is None
    # Deleting a finished job changes nothing.
    again = client.delete(f"/jobs/{first}")
    assert again.status_code == 200 and again.json()["status"] == "succeeded"


def test_failed_job_reports_typed_error(make_client, small_images):
    from qalign_core.errors import InvalidImageError

    client = make_client(pipeline=FakePipeline(fail_with=InvalidImageError("image too small")))
    done = poll(client, submit(client, small_images).json()["id"])
    assert done["status"] == "failed"
    assert done["error"] == {"type": "invalid_image", "detail": "image too small"}


def test_queue_full_is_429_with_retry_after(make_client, embedded_settings, small_images):
    pipeline = FakePipeline(gate=threading.Event())
    client = make_client(embedded_settings.model_copy(update={"max_queue_depth": 1}), pipeline=pipeline)
    submit(client, small_images)
    assert pipeline.running.wait(10)
    assert submit(client, small_images, seed=1).status_code == 202
    response = submit(client, small_images, seed=2)
    assert_problem(response, 429)
    assert int(response.headers["retry-after"]) > 0
    pipeline.gate.set()


def test_model_load_failure_makes_service_unready(embedded_settings, small_images):
    from qalign_core.errors import ModelLoadError

    def broken(_settings):
        raise ModelLoadError("model directory '/nowhere' does not exist")

    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(embedded_settings, pipeline_factory=broken)) as client:
        ready = wait_for(lambda: (r := client.get("/readyz")).status_code == 503 and r.json(), timeout=10)
        assert (
            ready["checks"]["workers"]["ok"] is False and "/nowhere" in ready["checks"]["workers"]["detail"]
        )
        body = assert_problem(submit(client, small_images), 503)
        assert "workers" in body["detail"]


def test_health_readiness_and_metrics(client, small_images):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = wait_for(lambda: (r := client.get("/readyz")).status_code == 200 and r.json())
    assert ready["ready"] is True and ready["mode"] == "embedded"
    assert set(ready["checks"]) == {"jobs", "store", "workers"}
    poll(client, submit(client, small_images).json()["id"])

    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    jobs = {s.labels["status"]: s.value for s in families["qalign_jobs"].samples}
    assert jobs["succeeded"] == 1 and jobs["queued"] == 0
    assert families["qalign_queue_depth"].samples[0].value == 0
    requests = [s for s in families["qalign_http_requests"].samples if s.name.endswith("_total")]
    assert any(s.labels["route"] == "/transfer" and s.labels["status"] == "202" for s in requests)
    assert any(s.labels["route"] == "/jobs/{job_id}" for s in requests), "routes are labelled by template"
    stages = {s.labels["stage"] for s in families["qalign_stage_duration_seconds"].samples}
    assert {"loading", "inverting", "denoising", "decoding", "uploading"} <= stages
    assert "qalign_http_request_duration_seconds" in families


def test_openapi_documents_both_encodings_and_ranges(client):
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/transfer"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    form = content["multipart/form-data"]["schema"]
    assert form["properties"]["structure"]["format"] == "binary" and form["required"] == [
        "structure",
        "appearance",
    ]
    assert form["properties"]["steps"]["maximum"] == 999
    assert content["application/json"]["schema"]["properties"]["steps"]["minimum"] == 2
    assert {"/jobs/{job_id}", "/jobs/{job_id}/result", "/healthz", "/readyz", "/metrics"} <= set(
        spec["paths"]
    )


def test_openapi_documents_many_appearances_aspect_and_results(client):
    spec = client.get("/openapi.json").json()
    content = spec["paths"]["/transfer"]["post"]["requestBody"]["content"]
    repeated = content["multipart/form-data"]["schema"]["properties"]["appearance"]
    assert repeated["type"] == "array" and repeated["items"]["format"] == "binary"
    assert (repeated["minItems"], repeated["maxItems"]) == (1, 8)
    listed = content["application/json"]["schema"]["properties"]["appearance"]["anyOf"]
    assert {"type": "string"} in listed
    assert any(o.get("type") == "array" and o["maxItems"] == 8 for o in listed)
    for media in ("multipart/form-data", "application/json"):
        assert content[media]["schema"]["properties"]["aspect"]["enum"] == ["structure", "square"]
    job = spec["components"]["schemas"]["JobOut"]["properties"]
    assert {"results", "output", "appearances"} <= set(job)
    result = spec["components"]["schemas"]["ResultOut"]["properties"]
    assert {"index", "url", "content_type", "width", "height", "expires_at"} <= set(result)
    results_k = spec["paths"]["/jobs/{job_id}/results/{k}"]["get"]
    assert {"200", "307", "404", "409", "410"} <= set(results_k["responses"])
    assert [p["name"] for p in results_k["parameters"]] == ["job_id", "k"]


def test_restart_keeps_finished_results_and_runs_queued_jobs(make_client, embedded_settings, small_images):
    pipeline = FakePipeline(gate=threading.Event())
    first = make_client(pipeline=pipeline)
    done_id = submit(first, small_images).json()["id"]
    assert pipeline.running.wait(10)
    queued_id = submit(first, small_images, seed=3).json()["id"]
    first.__exit__(None, None, None)  # stop: the running job is interrupted and requeued, not lost

    second = make_client(pipeline=FakePipeline())
    for job_id in (done_id, queued_id):
        done = poll(second, job_id)
        assert done["status"] == "succeeded", done
        assert second.get(f"/jobs/{job_id}/result").status_code == 200


def test_openapi_shows_error_type_as_an_enum_and_the_rules_from_their_home(client):
    """error.type is the closed set qalign_schema.jobs.ErrorType; the submission rules the document
    states are qalign_schema.submission's, not numbers written again."""
    spec = client.get("/openapi.json").json()
    error_type = spec["components"]["schemas"]["ErrorOut"]["properties"]["type"]
    assert error_type["enum"] == list(get_args(ErrorType)) == list(ERROR_TYPES)
    assert {"time_limit", "worker_lost", "interrupted", "internal_error"} <= set(error_type["enum"])
    applied = spec["components"]["schemas"]["ResultOut"]["properties"]["adain_applied"]["anyOf"]
    assert {"type": "string", "enum": list(ADAIN_MODES)} in applied

    post = spec["paths"]["/transfer"]["post"]
    (header,) = [p for p in post["parameters"] if p["name"] == "Idempotency-Key"]
    assert header["schema"]["maxLength"] == IDEMPOTENCY_KEY_MAX_LENGTH
    assert re.fullmatch(header["schema"]["pattern"], "6d1f2a3b-9c4e") and not re.fullmatch(
        header["schema"]["pattern"], "has space"
    )
    content = post["requestBody"]["content"]
    form = content["multipart/form-data"]["schema"]["properties"]
    assert form["webhook_url"]["maxLength"] == MAX_URL_LENGTH
    assert form["webhook_events_filter"]["items"]["enum"] == list(EVENT_KINDS)
    json_body = content["application/json"]["schema"]["properties"]
    webhook = {"type": "string", "maxLength": MAX_URL_LENGTH, "pattern": "^https?://"}
    assert webhook in json_body["webhook_url"]["anyOf"]


def test_limits_answer_without_a_key_from_the_settings_and_the_schema(make_client, embedded_settings):
    keys = {"api_keys": "someone:" + "0" * 64, "max_upload_bytes": 12345}
    settings = embedded_settings.model_copy(update=keys)
    keyed = make_client(settings)
    answer = keyed.get("/limits")
    assert keyed.get("/jobs").status_code == 401  # the job routes need the key; the limits do not
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["max_upload_bytes"] == 12345 and body["max_request_bytes"] == settings.request_limit
    assert body["max_appearances"] == MAX_APPEARANCES and body["max_url_length"] == MAX_URL_LENGTH
    assert body["steps"] == {"min": 2, "max": MAX_STEPS} and body["seed"]["min"] == 0
    assert body["methods"][0] == TransferParams().method and body["adain_modes"][0] == TransferParams().adain
    assert body["error_types"] == list(ERROR_TYPES) and body["event_kinds"] == list(EVENT_KINDS)
    assert body["terminal_statuses"] == ["succeeded", "failed", "canceled"]
    assert body["problem_types"] == list(PROBLEM_KINDS)
