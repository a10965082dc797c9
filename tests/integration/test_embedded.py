"""Embedded mode end to end: ``serve()`` (uvicorn, in-process worker, SQLite, local store), real model."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from int_helpers import (
    FAST,
    assert_shape_kept,
    crop_to,
    decode,
    free_port,
    png,
    poll,
    stop_process,
    submit,
    submit_many,
    wait_for,
)
from PIL import Image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]


def start_server(port: int, data_dir, model: str, log) -> subprocess.Popen:
    env = {
        **os.environ,
        "QALIGN_MODEL": model,
        "QALIGN_DEVICE": "cpu",
        "QALIGN_DATA_DIR": str(data_dir),
        "QALIGN_PROGRESS_INTERVAL": "0.2",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("QALIGN_REDIS_URL", None)
    env.pop("QALIGN_S3_BUCKET", None)
    code = f"from service.cli import serve; serve('127.0.0.1', {port})"
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT)


def test_embedded_flow_survives_api_restart(tiny_model_dir, photo_bytes, tmp_path):
    data_dir, log_path = tmp_path / "data", tmp_path / "server.log"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as log:
        first = start_server(port, data_dir, tiny_model_dir, log)
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                wait_for(lambda: _up(client), timeout=180)
                job = submit(client, photo_bytes, **FAST, output_format="jpeg")
        finally:
            stop_process(first, 30)  # the job is queued or running: it must survive the restart

        second = start_server(port, data_dir, tiny_model_dir, log)
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                wait_for(lambda: _up(client), timeout=180)
                done = poll(client, job["id"])
                assert done["status"] == "succeeded", (done, log_path.read_text()[-3000:])
                assert done["result"]["url"] == f"{base}/jobs/{job['id']}/result"
                # Masked AdaIN is the default: the metrics say what ran and whether masks were found.
                assert done["params"]["adain"] == "masked"
                metrics = done["metrics"]
                assert metrics["adain_applied"] == ("masked" if metrics["object_masks_found"] else "plain")
                response = client.get(done["result"]["url"])
                assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
                image = decode(response.content)
                assert image.format == "JPEG" and image.size == (
                    done["output"]["width"],
                    done["output"]["height"],
                )
                assert_shape_kept(image.size, decode(photo_bytes[0]).size, 128)
                assert client.get("/readyz").json()["checks"]["workers"]["ok"] is True
        finally:
            stop_process(second, 30)
    assert '"job_id": "' + job["id"] in log_path.read_text(), "job lines are tagged with the job id"


def _up(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def embedded_client(tiny_model_dir, tmp_path_factory):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        _env_file=None, model=tiny_model_dir, device="cpu", data_dir=tmp_path_factory.mktemp("e")
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.mark.parametrize("ratio", [(4, 3), (9, 16)], ids=["4:3", "9:16"])
def test_a_photo_comes_back_in_its_shape(embedded_client, photos, photo_bytes, ratio):
    structure = crop_to(photos[0], ratio)
    job = submit(embedded_client, (png(structure), photo_bytes[1]), size=256, **FAST)
    done = poll(embedded_client, job["id"])
    assert done["status"] == "succeeded", done
    shape = (done["output"]["width"], done["output"]["height"])
    assert_shape_kept(shape, structure.size, 256)
    assert decode(embedded_client.get(f"/jobs/{job['id']}/result").content).size == shape
    # aspect=square is v1.1's centre-cropped square.
    square = poll(
        embedded_client,
        submit(embedded_client, (png(structure), photo_bytes[1]), size=128, aspect="square", **FAST)["id"],
    )
    assert (square["output"]["width"], square["output"]["height"]) == (128, 128)


def test_three_appearances_give_three_results_in_order(embedded_client, photos, photo_bytes):
    appearances = [photo_bytes[1], png(photos[0].rotate(180)), png(photos[1].transpose(0))]
    job = submit_many(embedded_client, photo_bytes[0], appearances, **FAST)
    done = poll(embedded_client, job["id"])
    assert done["status"] == "succeeded", done
    assert [r["index"] for r in done["results"]] == [0, 1, 2] and done["metrics"]["rows_per_step"] == 10
    images = []
    for k, result in enumerate(done["results"]):
        data = embedded_client.get(f"/jobs/{job['id']}/results/{k}").content
        assert data == embedded_client.get(result["url"]).content
        images.append(decode(data).convert("RGB"))
        assert images[-1].size == (done["output"]["width"], done["output"]["height"])
    assert len({image.tobytes() for image in images}) == 3
    single = poll(embedded_client, submit(embedded_client, (photo_bytes[0], appearances[2]), **FAST)["id"])
    alone = decode(embedded_client.get(f"/jobs/{single['id']}/result").content).convert("RGB")
    differences = [mean_abs_difference(image, alone) for image in images]
    assert differences[2] < 1.0 and differences[2] < min(differences[:2]), differences


def mean_abs_difference(first, second) -> float:
    import numpy as np

    return float(np.abs(np.asarray(first, dtype=float) - np.asarray(second, dtype=float)).mean())


def _problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
    return body


def test_bad_input_gets_problem_details(embedded_client, photo_bytes, tmp_path):
    cat, coffee = photo_bytes
    files = {"structure": ("cat.png", cat, "image/png"), "appearance": ("x.txt", b"hello", "text/plain")}
    assert "not an image" in _problem(embedded_client.post("/transfer", files=files), 400)["detail"]

    gif = tmp_path / "a.gif"
    Image.new("RGB", (16, 16)).save(gif)
    files = {
        "structure": ("cat.png", cat, "image/png"),
        "appearance": ("a.gif", gif.read_bytes(), "image/gif"),
    }
    _problem(embedded_client.post("/transfer", files=files), 415)

    files = {"structure": ("cat.png", cat, "image/png"), "appearance": ("c.jpg", coffee, "image/jpeg")}
    body = _problem(embedded_client.post("/transfer", files=files, data={"swap_guidance_scale": "99"}), 422)
    assert body["errors"][0]["field"] == "swap_guidance_scale" and "<= 20.0" in body["errors"][0]["allowed"]

    body = _problem(
        embedded_client.post("/transfer", files={"structure": ("cat.png", cat, "image/png")}), 422
    )
    assert body["errors"][0]["field"] == "appearance"


def test_an_sdxl_model_serves_two_looks_on_a_3_2_photo_in_its_shape(
    tiny_sdxl_model_dir, photos, photo_bytes, tmp_path
):
    """The embedded service on the tiny SDXL model: /readyz names the backbone and its sizes, a
    2-appearance job on a 3:2 photo succeeds in the photo's shape (SDXL's 32 px unit), and a size
    the model cannot run is refused at submission, naming what it takes."""
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    settings = Settings(_env_file=None, model=tiny_sdxl_model_dir, device="cpu", data_dir=tmp_path / "e")
    with TestClient(create_app(settings)) as client:
        wait_for(lambda: client.get("/readyz").json()["model"] is not None, timeout=180)
        model = client.get("/readyz").json()["model"]
        assert model == {
            "name": tiny_sdxl_model_dir,
            "backbone": "sdxl",
            "title": "Stable Diffusion XL",
            "native_size": 128,
            "size_unit": 32,
            "min_size": 64,
            "max_size": 256,
        }
        structure = crop_to(photos[0], (3, 2))
        job = submit_many(client, png(structure), [photo_bytes[1], png(photos[0].rotate(180))], **FAST)
        done = poll(client, job["id"])
        assert done["status"] == "succeeded", done
        shape = (done["output"]["width"], done["output"]["height"])
        # 3:2 at 128 px: the whole photo at its aspect (128 x 85), run on a grid of SDXL's 32 px units.
        assert shape == (128, 85) and (done["output"]["grid_width"], done["output"]["grid_height"]) == (
            96,
            64,
        )
        assert_shape_kept(shape, structure.size, 128)
        assert [decode(client.get(r["url"]).content).size for r in done["results"]] == [shape, shape]
        files = {
            "structure": ("s.png", png(structure), "image/png"),
            "appearance": ("a.jpg", photo_bytes[1], "image/jpeg"),
        }
        body = _problem(client.post("/transfer", files=files, data={"size": "512"}), 422)
        assert "a multiple of 32 from 64 to 256" in body["detail"]
