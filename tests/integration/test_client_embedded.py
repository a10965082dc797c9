"""The Python client and ``qalign transfer --server`` against the real embedded service: uvicorn on a
loopback port, the in-process worker with the tiny model, SQLite and the local store."""

from __future__ import annotations

import asyncio
import base64
import http.server
import io
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from click.testing import CliRunner
from int_helpers import FAST, REPO, SLOW, decode, free_port, wait_for
from PIL import Image
from testkit import LiveService

import qalign_client
from qalign_cli.main import cli
from qalign_client import AsyncClient, Client
from qalign_client.webhooks import verify

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
#: Wide deadlines: a tiny-model job takes seconds on an idle CPU; the machine may be busy.
JOB_TIMEOUT = 240
#: The tiny model's rounding unit: VAE factor 8 times 2^3 UNet downsamplings (64 px, as SD 1.5's).
TINY_UNIT = 64
#: The cat (451 x 300) in its shape on the tiny model: longer side 128, the shorter 85 (its 3:2 to the pixel).
CAT_SHAPE = (128, 85)
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"client-test-webhook-key-32-bytes").decode()


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        _env_file=None,
        model=tiny_model_dir,
        device="cpu",
        redis_url=None,
        data_dir=tmp_path_factory.mktemp("client-embedded"),
        progress_interval=0.2,
        cancel_check_interval=0.1,
        readiness_cache_s=0,
        webhook_secret=WEBHOOK_SECRET,
        webhook_allow_hosts="127.0.0.1",
    )
    with LiveService(create_app(settings), ready=True) as served:
        yield served


@pytest.fixture
def client(server):
    with Client(server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def files(tmp_path_factory, photo_bytes):
    folder = tmp_path_factory.mktemp("client-files")
    (folder / "cat.png").write_bytes(photo_bytes[0])
    (folder / "cup.jpg").write_bytes(photo_bytes[1])
    return folder


def test_run_submit_wait_and_result(client, files, photos, tmp_path):
    out = client.run(
        files / "cat.png", files / "cup.jpg", FAST, path=tmp_path / "out.png", timeout=JOB_TIMEOUT
    )
    assert out == tmp_path / "out.png" and decode(out.read_bytes()).size == CAT_SHAPE

    job = client.submit(photos[0], (files / "cup.jpg").read_bytes(), qalign_client.TransferParams(**FAST),
                        output_format="webp")  # fmt: skip
    assert isinstance(job, qalign_client.JobOut) and job.status in ("queued", "running", "succeeded")
    done = client.wait(job, timeout=JOB_TIMEOUT)
    assert done.status == "succeeded" and done.result.content_type == "image/webp"
    assert done.params.output_format == "webp" and done.metrics.total_s > 0
    image = decode(client.result(done))
    assert image.format == "WEBP" and image.size == (done.result.width, done.result.height)


def test_idempotency_key_gives_the_same_job(client, photo_bytes):
    first = client.submit(*photo_bytes, FAST, idempotency_key="client-test-key-1")
    again = client.submit(*photo_bytes, FAST, idempotency_key="client-test-key-1")
    assert again.id == first.id
    with pytest.raises(qalign_client.ConflictError) as caught:
        client.submit(*photo_bytes, {**FAST, "seed": 9}, idempotency_key="client-test-key-1")
    assert caught.value.status == 409 and "Idempotency-Key" in caught.value.detail
    client.cancel(first)  # its run is not needed


def test_refusals_are_typed_errors_with_problem_details(client, photo_bytes):
    with pytest.raises(qalign_client.BadRequestError) as caught:
        client.submit(photo_bytes[0], b"hello, not an image", FAST)
    error = caught.value
    assert error.status == 400 and "appearance" in error.detail and error.type.startswith("/problems/")
    with pytest.raises(qalign_client.NotFoundError) as caught:
        client.get("f" * 32)
    assert caught.value.status == 404 and caught.value.title == "Not Found"
    with pytest.raises(qalign_client.ValidationError) as caught:  # refused before sending
        client.submit(*photo_bytes, swap_guidance_scale=99)
    assert caught.value.errors[0].field == "swap_guidance_scale"


def test_cancel_running_and_queued_jobs(client, photo_bytes):
    running = client.submit(*photo_bytes, SLOW)
    queued = client.submit(*photo_bytes, SLOW, seed=5)  # one worker thread: it waits behind
    wait_for(lambda: client.get(running).status == "running", timeout=JOB_TIMEOUT)
    assert client.cancel(queued).status == "canceled"
    client.cancel(running)
    done = client.wait(running, timeout=JOB_TIMEOUT)
    assert done.status == "canceled" and done.result is None
    with pytest.raises(qalign_client.ConflictError):
        client.result(done)

    def cancel_once_running(job: qalign_client.JobOut) -> None:
        if job.status == "running":
            client.cancel(job)

    with pytest.raises(qalign_client.JobFailedError) as caught:
        client.run(
            *photo_bytes, SLOW, timeout=JOB_TIMEOUT, poll_interval=0.1, on_progress=cancel_once_running
        )
    assert caught.value.job.status == "canceled"


def test_stream_progress_events(client, photo_bytes):
    job = client.submit(*photo_bytes, FAST)
    events = list(client.stream(job))
    assert events[-1].event == "succeeded" and events[-1].job.status == "succeeded"
    assert all(e.event == "progress" for e in events[:-1]) and len(events) >= 3
    ids = [int(e.id) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    progress = [e.job.progress for e in events]
    assert progress == sorted(progress) and progress[-1] == 1.0
    # Resuming after an event gives the rest of the stream only.
    rest = list(client.stream(job, last_event_id=events[-2].id))
    assert [e.id for e in rest] == [events[-1].id]


def test_prefer_wait_returns_the_finished_job(client, photo_bytes):
    started = time.monotonic()
    job = client.submit(*photo_bytes, FAST, prefer_wait=60)
    if job.finished:  # 201: the service held the answer until the job ended
        assert job.status == "succeeded" and job.result is not None
    else:  # 202 only once the 60 s are over (a very busy machine)
        assert time.monotonic() - started >= 59
        assert client.wait(job, timeout=JOB_TIMEOUT).status == "succeeded"


def test_list_pages_newest_first(client, photo_bytes):
    submitted = [client.submit(*photo_bytes, {**FAST, "seed": seed}) for seed in (11, 12)]
    listed = [job.id for job in client.list(page_size=1)]  # one job per page: the cursor is used
    assert listed[:2] == [submitted[1].id, submitted[0].id], "newest first"
    assert [job.id for job in client.list(limit=3, page_size=2)] == listed[:3]
    client.cancel(submitted[1])
    canceled = [job.id for job in client.list(status="canceled")]
    assert submitted[1].id in canceled and submitted[0].id not in canceled
    client.cancel(submitted[0])


def test_erase_removes_every_url(client, photo_bytes):
    done = client.wait(client.submit(*photo_bytes, FAST), timeout=JOB_TIMEOUT)
    assert done.status == "succeeded"
    assert client.erase(done) is None
    for call in (client.get, client.result, client.cancel):
        with pytest.raises(qalign_client.NotFoundError):
            call(done)


def test_async_client(server, photo_bytes, tmp_path):
    async def scenario():
        async with AsyncClient(server.url, timeout=60) as client:
            jobs = await asyncio.gather(*(client.submit(*photo_bytes, FAST, seed=s) for s in (21, 22)))
            done = await asyncio.gather(*(client.wait(j, timeout=JOB_TIMEOUT) for j in jobs))
            data = await client.result(done[0])
            path = await client.result(done[1], tmp_path / "second.png")
            with pytest.raises(qalign_client.NotFoundError):
                await client.get("f" * 32)
            return done, data, path

    done, data, path = asyncio.run(scenario())
    assert [j.status for j in done] == ["succeeded", "succeeded"] and done[0].id != done[1].id
    assert decode(data).size == decode(path.read_bytes()).size == CAT_SHAPE


def test_async_stream(server, photo_bytes):
    async def scenario():
        async with AsyncClient(server.url, timeout=60) as client:
            job = await client.submit(*photo_bytes, FAST)
            return [event async for event in client.stream(job)]

    events = asyncio.run(scenario())
    assert events[-1].event == "succeeded" and all(e.event == "progress" for e in events[:-1])


def test_webhook_deliveries_verify_with_the_client(client, photo_bytes):
    received: list[tuple[dict, bytes]] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((dict(self.headers.items()), body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        hook = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        job = client.submit(*photo_bytes, FAST, webhook_url=hook, webhook_events_filter=["completed"])
        client.wait(job, timeout=JOB_TIMEOUT)
        wait_for(lambda: received, timeout=60)
    finally:
        receiver.shutdown()
        receiver.server_close()
    (headers, body), *_ = received
    delivered = verify(WEBHOOK_SECRET, headers, body)
    assert delivered.id == job.id and delivered.status == "succeeded" and len(received) == 1
    tampered = body.replace(b'"succeeded"', b'"failed"')
    with pytest.raises(qalign_client.WebhookVerificationError):
        verify(WEBHOOK_SECRET, headers, tampered)


# ---------------------------------------------------------------------------------------------- many looks
@pytest.fixture(scope="module")
def mirrored_cup(photos) -> bytes:
    """A second appearance: the cup mirrored."""
    buffer = io.BytesIO()
    photos[1].transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(buffer, format="PNG")
    return buffer.getvalue()


def test_several_appearances_give_one_result_each_in_the_structures_shape(
    client, files, photos, mirrored_cup, tmp_path
):
    job = client.submit(files / "cat.png", [files / "cup.jpg", mirrored_cup], FAST, aspect="structure")
    done = client.wait(job, timeout=JOB_TIMEOUT)
    assert done.status == "succeeded" and done.appearances == 2 and len(done.results) == 2
    width, height = done.output.width, done.output.height
    cat_width, cat_height = photos[0].size
    assert width > height and width == done.params.size, "the longer side is size; the cat is landscape"
    assert abs(height - width * cat_height / cat_width) <= 0.5, "the structure's aspect to the pixel"

    paths = client.results(done, tmp_path / "looks.png")  # a file name: numbered beside it
    assert paths == [tmp_path / "looks-0.png", tmp_path / "looks-1.png"]
    images = [decode(p.read_bytes()) for p in paths]
    assert [i.size for i in images] == [(width, height)] * 2
    assert client.result(done, k=1) == paths[1].read_bytes() != paths[0].read_bytes()
    assert client.results(done.id) == [p.read_bytes() for p in paths]
    with pytest.raises(qalign_client.NotFoundError):
        client.result(done, k=2)

    # The same pair alone is result 0 (a list of one is one appearance); square crops as CIA does.
    alone = client.run(files / "cat.png", [files / "cup.jpg"], FAST, timeout=JOB_TIMEOUT)
    assert alone == [paths[0].read_bytes()]
    square = client.run(files / "cat.png", files / "cup.jpg", FAST, aspect="square", timeout=JOB_TIMEOUT)
    assert decode(square).size == (width, width)


def test_too_many_appearances_are_refused_before_sending(client, files):
    with pytest.raises(qalign_client.ValidationError) as caught:
        client.submit(files / "cat.png", [files / "cup.jpg"] * 9, FAST)
    assert caught.value.errors[0].field == "appearance" and "got 9" in caught.value.detail


def test_async_client_with_several_appearances(server, files, mirrored_cup, tmp_path):
    async def scenario():
        async with AsyncClient(server.url, timeout=60) as client:
            paths = await client.run(
                files / "cat.png", [mirrored_cup, files / "cup.jpg"], FAST, path=tmp_path, timeout=JOB_TIMEOUT
            )
            job = await client.get(paths[0].name.split("-")[1])  # the directory's qalign-<id>-<k>.png
            return paths, job, await client.results(job)

    paths, job, data = asyncio.run(scenario())
    assert [p.read_bytes() for p in paths] == data and len(data) == 2
    assert all(decode(d).size == (job.output.width, job.output.height) for d in data)


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_transfer_on_the_server(server, files, tmp_path):
    out = tmp_path / "cli.jpg"
    result = CliRunner().invoke(
        cli,
        ["transfer", "--server", server.url, "--structure", str(files / "cat.png"),
         "--appearance", str(files / "cup.jpg"), "--output", str(out), "--steps", "10", "--skip-steps", "3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert decode(out.read_bytes()).format == "JPEG"  # the format from the suffix, as locally
    assert f"wrote {out} ({CAT_SHAPE[0]}x{CAT_SHAPE[1]}" in result.stdout
    assert "100%" in result.stderr and "done" in result.stderr  # the progress bar reached the end


def test_cli_several_appearances_on_the_server(server, files, mirrored_cup, tmp_path):
    second = tmp_path / "cup-mirrored.png"
    second.write_bytes(mirrored_cup)
    out = tmp_path / "look.webp"
    result = CliRunner().invoke(
        cli,
        ["transfer", "--server", server.url, "--structure", str(files / "cat.png"),
         "--appearance", str(files / "cup.jpg"), "--appearance", str(second), "--output", str(out),
         "--aspect", "square", *FAST_ARGS],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    written = [tmp_path / "look-0.webp", tmp_path / "look-1.webp"]
    assert f"wrote 2 results: {written[0]}, {written[1]} (" in result.stdout
    images = [decode(path.read_bytes()) for path in written]
    assert all(i.format == "WEBP" and i.size[0] == i.size[1] for i in images)  # --aspect square
    assert not out.exists()

    into = tmp_path / "into"
    into.mkdir()
    result = CliRunner().invoke(
        cli,
        ["transfer", "--server", server.url, "--structure", str(files / "cat.png"),
         "--appearance", str(second), "--appearance", str(files / "cup.jpg"), "--output", str(into),
         *FAST_ARGS],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    job_id = result.stdout.rsplit("; job ", 1)[1].split(")", 1)[0]
    names = [f"qalign-{job_id}-0.png", f"qalign-{job_id}-1.png"]  # the client's directory names
    assert sorted(p.name for p in into.iterdir()) == names
    shapes = {decode((into / name).read_bytes()).size for name in names}
    (shape,) = shapes
    assert shape[0] > shape[1], "the default aspect keeps the cat's landscape shape"
    assert f"wrote 2 results: {into / names[0]}, {into / names[1]} ({shape[0]}x{shape[1]}" in result.stdout


FAST_ARGS = ["--steps", str(FAST["steps"]), "--skip-steps", str(FAST["skip_steps"])]


def test_cli_errors_are_one_line(server, files, tmp_path, monkeypatch):
    args = ["transfer", "--structure", str(files / "cat.png"), "--output", str(tmp_path / "o.png")]
    monkeypatch.setenv("QALIGN_SERVER", server.url)
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    refused = CliRunner().invoke(cli, [*args, "--appearance", str(notes)])
    assert refused.exit_code == 1
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith(f"qalign: error: {server.url} refused the request (400 Bad Request): appearance")

    local_only = CliRunner().invoke(cli, [*args, "--appearance", str(files / "cup.jpg"), "--model", "m"])
    assert local_only.exit_code == 2 and "--model: only for local runs" in local_only.stderr

    down = f"http://127.0.0.1:{free_port()}"
    unreachable = CliRunner().invoke(
        cli, [*args, "--appearance", str(files / "cup.jpg"), "--server", down]
    )  # an explicit --server wins over $QALIGN_SERVER
    assert unreachable.exit_code == 1 and len(unreachable.stderr.strip().splitlines()) == 1
    assert "cannot reach the service" in unreachable.stderr


def test_the_readme_client_example_runs(server, tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text()
    section = readme.split("Or from Python, with the client", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    for name in ("structure.png", "appearance.png"):
        (tmp_path / "tests/golden/data").mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "tests/golden/data" / name, tmp_path / "tests/golden/data" / name)
    monkeypatch.chdir(tmp_path)
    exec(compile(example.replace("http://127.0.0.1:8000", server.url), "README.md", "exec"), {})
    first = decode((tmp_path / "result.png").read_bytes())
    written = [tmp_path / "look-0.png", tmp_path / "look-1.png"]  # numbered beside the given name
    assert not (tmp_path / "look.png").exists()
    assert written[0].read_bytes() == (tmp_path / "result.png").read_bytes()
    assert first.format == "PNG"


# ---------------------------------------------------------------------------------------------- install
def test_client_installs_alone_with_httpx_and_pydantic(server, files, tmp_path):
    """A fresh venv (no system site-packages) gets only the qalign-client distribution and its two
    dependencies from the package index, then runs a transfer on the service."""
    source = tmp_path / "src"
    for name in ("client", "qalign_client", "qalign_schema"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "build"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", str(source / "client")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr
    script = textwrap.dedent(
        f"""
        import sys
        import qalign_client
        from qalign_client import Client
        with Client({server.url!r}) as client:
            data = client.run({str(files / "cat.png")!r}, {str(files / "cup.jpg")!r},
                              {{"steps": 10, "skip_steps": 3}}, timeout={JOB_TIMEOUT})
        heavy = sorted(m for m in ("torch", "numpy", "PIL", "fastapi", "qalign_core") if m in sys.modules)
        print(len(data), data[:4].hex(), qalign_client.__file__, heavy)
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "QALIGN_SERVER", "QALIGN_API_KEY")}
    ran = subprocess.run(
        [str(python), "-c", script],
        capture_output=True, text=True, timeout=JOB_TIMEOUT + 60, cwd=tmp_path, env=env,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    size, magic, location, heavy = ran.stdout.split(maxsplit=3)
    assert int(size) > 100 and magic == "89504e47"  # a PNG
    assert location.startswith(str(venv)) and heavy.strip() == "[]"
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, timeout=120
    )
    names = {line.split("==")[0].lower() for line in listed.stdout.split()}
    assert "qalign-client" in names and not names & {"torch", "numpy", "pillow", "fastapi", "qalign"}
