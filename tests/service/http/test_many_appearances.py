"""Jobs with several appearance images through the API (embedded app, fake pipeline): results in
order, /results/{k}, refusals of k, idempotency, erasure, cancel and events over all N (the ETA:
tests/service/jobs/test_estimates.py)."""

from __future__ import annotations

import base64
import io
import json
import threading

from PIL import Image
from svc_helpers import FakePipeline, encode, fake_colour, read_sse
from testkit import assert_problem, poll


def appearance_images(count: int) -> list[bytes]:
    return [encode(Image.new("RGB", (24, 16), (40 * k, 90, 30)), "PNG") for k in range(count)]


def submit_many(client, structure: bytes, appearances: list[bytes], headers: dict | None = None, **fields):
    files = [("structure", ("s.png", structure, "image/png"))]
    files += [("appearance", (f"a{k}.png", image, "image/png")) for k, image in enumerate(appearances)]
    data = {name: str(value) for name, value in fields.items()}
    return client.post("/transfer", files=files, data=data, headers=headers)


def test_results_come_in_order_and_each_downloads(client, small_images, fake_pipeline):
    appearances = appearance_images(3)
    job = submit_many(client, small_images[0], appearances).json()
    assert job["appearances"] == 3 and job["results"] == [] and job["output"] is None
    done = poll(client, job["id"])
    assert done["status"] == "succeeded"
    # The pipeline got every appearance, in the order of the parts.
    assert fake_pipeline.calls[-1][1] == appearances
    assert [r["index"] for r in done["results"]] == [0, 1, 2]
    assert done["urls"]["results"] == [f"http://testserver/jobs/{job['id']}/results/{k}" for k in range(3)]
    assert done["result"] == done["results"][0]
    assert done["output"] == {
        "width": 64,
        "height": 40,
        "aspect_clamped": False,
        "grid_width": 64,
        "grid_height": 40,
        "crop": None,
    }
    assert done["metrics"]["rows_per_step"] == 10 and done["metrics"]["appearances"] == 3
    for k, result in enumerate(done["results"]):
        for url in (result["url"], done["urls"]["results"][k]):
            image = Image.open(io.BytesIO(client.get(url).content)).convert("RGB")
            assert image.size == (64, 40) and image.getpixel((0, 0)) == fake_colour(k)


def test_result_k_out_of_range_is_404_naming_the_range(client, small_images):
    job = submit_many(client, small_images[0], appearance_images(2)).json()
    assert poll(client, job["id"])["status"] == "succeeded"
    for k in (2, 9, -1):
        body = assert_problem(client.get(f"/jobs/{job['id']}/results/{k}"), 404)
        assert body["type"] == "/problems/result-not-found" and "0 to 1" in body["detail"]
    body = assert_problem(client.get(f"/jobs/{job['id']}/results/first"), 422)
    assert body["errors"][0]["field"] == "k"
    single = submit_many(client, *small_images[:1], [small_images[1]]).json()
    assert poll(client, single["id"])["status"] == "succeeded"
    assert (
        client.get(f"/jobs/{single['id']}/results/0").content
        == client.get(f"/jobs/{single['id']}/result").content
    )
    assert "numbered 0" in assert_problem(client.get(f"/jobs/{single['id']}/results/1"), 404)["detail"]
    assert_problem(client.get("/jobs/0123456789abcdef0123456789abcdef/results/0"), 404)


def test_results_are_409_while_the_job_runs_and_after_cancel(make_client, small_images):
    pipeline = FakePipeline(gate=threading.Event())
    client = make_client(pipeline=pipeline)
    job = submit_many(client, small_images[0], appearance_images(3)).json()
    assert pipeline.running.wait(10)
    for url in (f"/jobs/{job['id']}/results/2", f"/jobs/{job['id']}/result"):
        assert assert_problem(client.get(url), 409)["type"] == "/problems/result-not-ready"
    assert client.delete(f"/jobs/{job['id']}").status_code == 202
    canceled = poll(client, job["id"])
    assert canceled["status"] == "canceled" and canceled["results"] == []
    assert_problem(client.get(f"/jobs/{job['id']}/results/1"), 409)
    assert_problem(client.get(f"/jobs/{job['id']}/results/3"), 404)


def test_idempotency_covers_every_appearance_in_order(client, small_images):
    first, second = appearance_images(2)
    key = {"Idempotency-Key": "many-1"}
    job = submit_many(client, small_images[0], [first, second], headers=key)
    assert job.status_code == 202
    again = submit_many(client, small_images[0], [first, second], headers=key)
    assert again.status_code == 200 and again.json()["id"] == job.json()["id"]
    as_json = {
        "structure": base64.b64encode(small_images[0]).decode(),
        "appearance": [base64.b64encode(image).decode() for image in (first, second)],
    }
    assert client.post("/transfer", json=as_json, headers=key).json()["id"] == job.json()["id"]
    for other in ([second, first], [first], [first, second, first]):
        body = assert_problem(submit_many(client, small_images[0], other, headers=key), 409)
        assert "different request" in body["detail"]


def test_a_single_appearance_as_a_one_item_list_is_the_same_request(client, small_images):
    key = {"Idempotency-Key": "one-1"}
    job = submit_many(client, small_images[0], [small_images[1]], headers=key).json()
    as_list = {
        "structure": base64.b64encode(small_images[0]).decode(),
        "appearance": [base64.b64encode(small_images[1]).decode()],
    }
    assert client.post("/transfer", json=as_list, headers=key).json()["id"] == job["id"]


def test_erasure_removes_every_result_and_input(client, small_images):
    appearances = appearance_images(3)
    job_id = submit_many(client, small_images[0], appearances).json()["id"]
    assert poll(client, job_id)["status"] == "succeeded"
    services = client.app.state.services
    record = services.stores.records.get(job_id)
    assert len(record.results) == 3 and len(record.appearance_keys) == 3 and len(record.inversion_keys) == 4
    stored = {
        key
        for folder in ("inputs", "results", "inversions")
        for key, _ in services.blobs.list_objects(folder)
    }
    assert {*record.input_keys, *(r.key for r in record.results), *record.inversion_keys} == stored
    assert client.delete(f"/jobs/{job_id}/data").status_code == 204
    left = {
        key
        for folder in ("inputs", "results", "inversions")
        for key, _ in services.blobs.list_objects(folder)
    }
    assert left == set()
    for k in range(3):
        assert_problem(client.get(f"/jobs/{job_id}/results/{k}"), 404)


def test_events_and_the_terminal_event_carry_the_results(client, small_images):
    job = submit_many(client, small_images[0], appearance_images(2)).json()
    with client.stream("GET", f"/jobs/{job['id']}/events") as response:
        events = list(read_sse(response.iter_lines()))
    terminal = json.loads(events[-1].data)
    assert events[-1].event == "succeeded" and len(terminal["results"]) == 2
    assert terminal["urls"]["results"][1].endswith(f"/jobs/{job['id']}/results/1")
