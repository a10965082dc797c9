"""The page at / in a real headless Chromium (Debian's package, driven by Playwright): a structure and
one or several appearances in, live progress from the events stream, the results in a grid in the
output's own shape, the history of earlier runs after a reload, upload boxes that stay in place, a
favicon; refusals shown readably; every limit and choice read from GET /limits, none written in the
page.

The embedded service (tiny model) runs in this process on a free loopback port with an API key, so
the page's key field and its fetch()-based events reader (EventSource cannot send a key) are used.
Screenshots go to $QALIGN_SCREENSHOTS when set (else the test's tmp_path), to be looked at.
Without Chromium the test skips, or fails where QALIGN_REQUIRE_TOOLS is set (.ci/run sets it).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import httpx
import pytest
from PIL import Image
from testkit import REQUIRE_TOOLS, LiveService, tool_missing

from service.auth import hash_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

KEY = "page-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
#: Smaller than the default, so that the page is seen to take the deployment's value from the API.
MAX_UPLOAD_BYTES = 1024 * 1024
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        tool_missing(
            "no Chromium found (/usr/bin/chromium): apt-get install chromium (scripts/test.sh does as root)",
            REQUIRE_TOOLS,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def live_service(tiny_model_dir, tmp_path_factory):
    from service.app import create_app
    from service.settings import Settings

    settings = Settings(
        _env_file=None,
        model=tiny_model_dir,
        device="cpu",
        data_dir=tmp_path_factory.mktemp("page"),
        api_keys=f"tester:{hash_key(KEY)}",
        progress_interval=0.1,
        max_upload_bytes=MAX_UPLOAD_BYTES,
    )
    with LiveService(create_app(settings)) as live:
        yield live


@pytest.fixture(scope="module")
def limits(live_service) -> dict:
    """What the service says a submission must fit (GET /limits needs no key)."""
    answer = httpx.get(f"{live_service.url}/limits")
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.fixture
def page(browser, live_service):
    context = browser.new_context()
    opened = context.new_page()
    opened.goto(live_service.url + "/")
    opened.wait_for_selector("body[data-ready]")  # GET /limits has answered and the page took it in
    yield opened
    context.close()


@pytest.fixture(scope="module")
def photo_files(photo_bytes, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("photos")
    structure, appearance = folder / "cat.png", folder / "coffee.jpg"
    structure.write_bytes(photo_bytes[0])
    appearance.write_bytes(photo_bytes[1])
    return structure, appearance


@pytest.fixture
def shots(tmp_path) -> Path:
    """Where screenshots go: $QALIGN_SCREENSHOTS (kept, to look at) or the test's tmp_path."""
    folder = Path(os.environ["QALIGN_SCREENSHOTS"]) if os.environ.get("QALIGN_SCREENSHOTS") else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def drop_file(page, zone: str, path: Path, content_type: str) -> None:
    """Drop ``path`` on ``zone`` as a user dragging a file from the desktop would."""
    data = base64.b64encode(path.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([data, name, type]) => {
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type }));
            return transfer;
        }""",
        [data, path.name, content_type],
    )
    page.dispatch_event(zone, "drop", {"dataTransfer": transfer})


#: True once the structure is chosen and ``arg`` appearance tiles are in place (files are added once
#: their first bytes have been read, a moment after they are dropped or chosen).
TILES_AND_STRUCTURE = """(count) => document.querySelector("#structure-drop").classList.contains("filled")
    && document.querySelectorAll(".appearance-tile").length === count"""


def give_key(page) -> None:
    """The API key field is under "More" (opened by the page itself after a 401). With the key the
    page asks GET /readyz again and shows the model line above the form: waited for here, so the
    layout has settled before a test measures it (on a busy machine the answer comes late)."""
    if not page.is_visible("#api-key"):
        page.click(".more summary")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.locator("#model-info").wait_for(timeout=120_000)  # the model may still be loading: asked again


def job_id_of(run) -> str:
    return run.get_attribute("data-job-id")


def test_two_photos_give_a_rendered_result_with_live_progress(page, live_service, photo_files, shots):
    drop_file(page, "#structure-drop", photo_files[0], "image/png")  # dropped
    page.set_input_files("#appearance", str(photo_files[1]))  # chosen
    page.wait_for_function(TILES_AND_STRUCTURE, arg=1)  # each file's first bytes are read first
    page.fill("#steps", "6")
    page.fill("#seed", "3")
    give_key(page)
    page.check("#compare")  # Q-Align and CIA side by side: two jobs
    assert page.is_visible("#structure-preview") and page.is_visible(".appearance-tile .preview")
    assert page.inner_text("#submit") == "Transfer"
    page.click("#submit")

    runs = page.locator(".run")
    runs.first.wait_for()
    assert runs.count() == 2
    for method in ("qalign", "cross_image"):
        page.wait_for_selector(f'.run[data-method="{method}"][data-state="shown"]', timeout=300_000)
    page.screenshot(path=str(shots / "page-compare.png"), full_page=True)

    for method in ("qalign", "cross_image"):
        run = page.locator(f'.run[data-method="{method}"]')
        assert run.get_attribute("data-status") == "succeeded"
        assert run.locator(".result-card").count() == 1
        size = run.locator(".result").evaluate("img => [img.naturalWidth, img.naturalHeight]")
        job_id = job_id_of(run)
        job = httpx.get(f"{live_service.url}/jobs/{job_id}", headers=AUTH).json()
        params = job["params"]
        assert params["method"] == method and params["steps"] == 6 and params["seed"] == 3
        assert size == [job["result"]["width"], job["result"]["height"]] and size[0] > 0
        assert run.locator(".size").inner_text() == f"{size[0]} × {size[1]}"
        download = run.locator(".download")
        assert download.get_attribute("href").startswith("blob:")
        assert download.get_attribute("download") == f"qalign-{job_id}.png"  # one result: no number
    # The progress came from the events stream: the page opened it (the service counts open streams).
    events = [r for r in page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")]
    assert sum("/events" in name for name in events) >= 2, events


@pytest.fixture(scope="module")
def wide_structure(photos, tmp_path_factory) -> Path:
    """The cat cropped to 16:9 (a landscape photo's shape)."""
    cat = photos[0]
    height = round(cat.width * 9 / 16)
    top = (cat.height - height) // 2
    path = tmp_path_factory.mktemp("wide") / "cat-16x9.png"
    cat.crop((0, top, cat.width, top + height)).save(path)
    return path


def boxes(page, selectors: list[str]) -> list[dict]:
    return [page.locator(selector).bounding_box() for selector in selectors]


#: Installed before a submit: after every change under #runs (cards added, a frame's --shape set, a
#: card loaded, a status change) it logs the result frames' boxes in page coordinates, and the
#: history entry's text beside the run card's status.
WATCH_RUNS = """() => {
    window.frameLog = [];
    window.statusLog = [];
    const snap = () => [...document.querySelectorAll("#runs .frame")].map((frame) => {
        const r = frame.getBoundingClientRect();
        return [r.x + scrollX, r.y + scrollY, r.width, r.height].map((v) => Math.round(v * 100) / 100);
    });
    new MutationObserver((records) => {
        window.frameLog.push(snap());
        for (const record of records) {
            if (record.attributeName !== "data-status") continue;
            const run = record.target;
            const entry = document.querySelector(
                `.history-item[data-job-id="${run.dataset.jobId}"] .history-meta`);
            window.statusLog.push([run.dataset.status, entry ? entry.textContent : null]);
        }
    }).observe(document.querySelector("#runs"), {
        subtree: true, childList: true, attributes: true,
        attributeFilter: ["style", "class", "data-status"],
    });
}"""


def test_two_appearances_on_a_wide_structure_fill_a_grid_in_its_shape_and_the_history(
    page, live_service, photo_files, wide_structure, shots, tmp_path, limits
):
    second = tmp_path / "cup-mirrored.png"
    Image.open(photo_files[1]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(second)
    give_key(page)
    page.fill("#steps", "6")
    fixed = ["#structure-drop", "#appearance-drop", "#submit", ".controls"]
    before = boxes(page, fixed)
    page.screenshot(path=str(shots / "page-empty.png"), full_page=True)

    # Upload boxes keep their place when the previews load: fixed-aspect boxes, images inside them.
    page.set_input_files("#structure", str(wide_structure))
    page.set_input_files("#appearance", [str(photo_files[1]), str(second)])
    page.wait_for_function(TILES_AND_STRUCTURE, arg=2)
    page.wait_for_function(
        "[...document.querySelectorAll('#structure-preview, .appearance-tile .preview')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    after = boxes(page, ["#structure-drop", ".appearance-tile:nth-child(1)", "#submit", ".controls"])
    assert after == before, "an upload box or the controls moved when the previews loaded"
    assert page.locator(".appearance-tile").count() == 2
    assert page.inner_text("#appearance-count") == f"2 / {limits['max_appearances']}"
    assert page.inner_text("#structure-size").startswith(f"{Image.open(wide_structure).width} × ")
    assert page.inner_text("#submit") == "Create 2 looks"
    page.screenshot(path=str(shots / "page-filled.png"), full_page=True)

    page.evaluate(WATCH_RUNS)
    page.click("#submit")
    run = page.locator(".run")
    page.wait_for_selector('.run[data-state="shown"]', timeout=300_000)
    page.screenshot(path=str(shots / "page-two-looks.png"), full_page=True)
    job_id = job_id_of(run)

    # No layout shift: the frames had their final boxes from the moment they appeared (before the
    # job had an output size), through the output's arrival and the images' loading.
    logged = [snapshot for snapshot in page.evaluate("window.frameLog") if len(snapshot) == 2]
    final = page.evaluate("window.frameLog.at(-1)")
    assert len(logged) >= 3 and all(snapshot == final for snapshot in logged), logged
    # The history said what the run card said at every status change.
    statuses = page.evaluate("window.statusLog")
    assert [status for status, _ in statuses][-1] == "succeeded", statuses
    assert all(text is not None and text.endswith(status) for status, text in statuses), statuses
    job = httpx.get(f"{live_service.url}/jobs/{job_id}", headers=AUTH).json()
    assert job["status"] == "succeeded" and job["appearances"] == 2 and job["params"]["aspect"] == "structure"
    width, height = job["output"]["width"], job["output"]["height"]
    assert width > height, "the output keeps the structure's landscape shape"
    cards = run.locator(".result-card")
    assert cards.count() == 2
    for k in range(2):
        card = cards.nth(k)
        size = card.locator(".result").evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert size == [width, height] == [job["results"][k]["width"], job["results"][k]["height"]]
        frame = card.locator(".frame").bounding_box()
        assert frame["width"] / frame["height"] == pytest.approx(width / height, rel=0.02)  # not squared
        assert card.locator(".download").get_attribute("download") == f"qalign-{job_id}-{k}.png"
        shown = card.locator(".result").evaluate(
            "img => fetch(img.src).then(r => r.arrayBuffer()).then(b => Array.from(new Uint8Array(b)))"
        )
        served = httpx.get(f"{live_service.url}/jobs/{job_id}/results/{k}", headers=AUTH)
        assert bytes(shown) == served.content, f"card {k} shows result {k}"
    with Image.open(io.BytesIO(served.content)) as image:
        assert image.size == (width, height)

    # The history remembers the run across a reload, with thumbnails, and opens it again.
    page.reload()
    item = page.locator(f'.history-item[data-job-id="{job_id}"]')
    item.wait_for(timeout=30_000)
    assert item.locator(".thumbs img").count() == 2
    assert item.locator(".thumbs img").first.get_attribute("src").startswith("data:image/jpeg")
    assert "2 looks" in item.inner_text() and f"{width} × {height}" in item.inner_text()
    page.screenshot(path=str(shots / "page-history.png"), full_page=True)
    give_key(page)
    item.locator(".history-open").click()
    page.wait_for_selector(f'.run[data-job-id="{job_id}"][data-state="shown"]', timeout=60_000)
    assert page.locator(".run .result-card.loaded").count() == 2
    page.screenshot(path=str(shots / "page-reopened.png"), full_page=True)


def test_the_page_names_the_served_model_once_a_key_unlocks_readiness_details(page):
    """The model line comes from GET /readyz (its details need a key on a keyed service)."""
    line = page.locator("#model-info")
    assert line.is_hidden()
    give_key(page)  # sends the key's change event and waits for the line
    text = line.inner_text()
    assert text.startswith("Model: Stable Diffusion 1.5") and "128 px on the longer side by default" in text
    assert "64 to 256 px in steps of 64" in text and line.get_attribute("data-backbone") == "sd15"


def test_the_missing_image_notice_follows_the_inputs(page, photo_files, limits):
    page.click("#submit")
    problem = page.locator("#form-problem")
    problem.wait_for()
    assert "structure: choose or drop an image" in problem.inner_text()
    page.set_input_files("#structure", str(photo_files[0]))
    page.wait_for_function("() => !document.querySelector('#form-problem').innerText.includes('structure:')")
    wanted = f"appearance: add 1 to {limits['max_appearances']} images"
    assert problem.is_visible() and wanted in problem.inner_text()
    drop_file(page, "#appearances", photo_files[1], "image/jpeg")
    problem.wait_for(state="hidden")  # both inputs given: the notice is gone before any submit
    assert page.locator(".appearance-tile").count() == 1 and page.locator(".run").count() == 0


def test_non_images_are_refused_when_dropped_or_chosen(page, photo_files, tmp_path, shots, limits):
    """A text file renamed .png has the type image/png: its first bytes tell it is no image."""
    renamed = tmp_path / "notes.png"
    renamed.write_text("just some text, not pixels")
    problem = page.locator("#form-problem")
    drop_file(page, "#appearances", renamed, "image/png")
    problem.wait_for()
    assert "Not an image" in problem.inner_text() and "not added: notes.png" in problem.inner_text()
    assert page.locator(".appearance-tile").count() == 0
    assert page.inner_text("#appearance-count") == f"0 / {limits['max_appearances']}"
    assert limits["image_formats_text"] in problem.inner_text()
    page.set_input_files("#appearance", [str(renamed), str(photo_files[1])])  # the image among them is kept
    page.wait_for_function("() => document.querySelectorAll('.appearance-tile').length === 1")
    as_structure = tmp_path / "layout.png"
    as_structure.write_text("no pixels either")
    drop_file(page, "#structure-drop", as_structure, "image/png")
    page.wait_for_function("() => document.querySelector('#form-problem').innerText.includes('layout.png')")
    assert page.is_hidden("#structure-preview")
    assert "filled" not in page.get_attribute("#structure-drop", "class")
    page.screenshot(path=str(shots / "page-not-an-image.png"), full_page=True)


def test_at_most_max_appearances_and_both_kinds_of_image_needed(page, photo_files, tmp_path, shots, limits):
    most = limits["max_appearances"]
    page.click("#submit")  # nothing chosen: said on the page, nothing sent
    problem = page.locator("#form-problem")
    problem.wait_for()
    assert "structure: choose or drop an image" in problem.inner_text()
    assert f"appearance: add 1 to {most} images" in problem.inner_text()
    assert page.locator(".run").count() == 0

    files = []
    for k in range(most + 1):
        files.append(tmp_path / f"look-{k}.jpg")
        files[-1].write_bytes(photo_files[1].read_bytes())
    page.set_input_files("#appearance", [str(path) for path in files])
    tiles = "(most) => document.querySelectorAll('.appearance-tile').length === most"
    page.wait_for_function(tiles, arg=most)
    assert page.locator(".appearance-tile").count() == most and page.is_hidden("#appearance-drop")
    assert f"not added: look-{most}.jpg" in problem.inner_text()
    assert page.inner_text("#appearance-count") == f"{most} / {most}"
    page.screenshot(path=str(shots / "page-most.png"), full_page=True)
    page.locator(".appearance-tile").nth(2).locator(".remove").click()
    assert page.locator(".appearance-tile").count() == most - 1 and page.is_visible("#appearance-drop")
    indexes = page.locator(".appearance-tile .tile-index").all_inner_texts()
    assert indexes == [str(k) for k in range(1, most)]


def test_the_page_takes_its_limits_and_choices_from_the_api(page, limits, tmp_path):
    """The words, inputs and choices the page shows are GET /limits' (this service's upload limit is
    not the default), and a file over the upload limit is refused before anything is sent."""
    assert limits["max_upload_bytes"] == MAX_UPLOAD_BYTES
    assert page.inner_text("#max-appearances") == str(limits["max_appearances"])
    assert page.inner_text("#max-upload") == "1 MB"
    assert page.inner_text("#formats-hint") == limits["image_formats_text"]
    for selector in ("#structure", "#appearance"):
        assert page.get_attribute(selector, "accept") == ",".join(limits["image_media_types"])
    for name in ("steps", "seed"):
        bounds = [page.get_attribute(f"#{name}", edge) for edge in ("min", "max")]
        assert bounds == [str(limits[name]["min"]), str(limits[name]["max"])]
    for name, values in (("method", limits["methods"]), ("aspect", limits["aspects"])):
        shown = page.eval_on_selector(f"#{name}", "select => [...select.options].map(o => o.value)")
        assert shown == values and page.input_value(f"#{name}") == values[0]  # the default first

    large = tmp_path / "large.png"  # a PNG signature, then more bytes than the service takes
    large.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_UPLOAD_BYTES)
    page.set_input_files("#appearance", str(large))
    problem = page.locator("#form-problem")
    problem.wait_for()
    assert "at most 1 MB" in problem.inner_text() and "not added: large.png" in problem.inner_text()
    assert page.locator(".appearance-tile").count() == 0 and page.locator(".run").count() == 0


def test_favicon_is_served(browser, live_service):
    icon = httpx.get(f"{live_service.url}/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/x-icon"
    with Image.open(io.BytesIO(icon.content)) as image:
        assert image.format == "ICO" and {(16, 16), (32, 32)} <= image.info["sizes"]
    context = browser.new_context()
    page = context.new_page()
    try:
        page.goto(live_service.url + "/")
        linked = page.eval_on_selector('link[rel="icon"]', "link => link.href")
    finally:
        context.close()
    svg = httpx.get(linked)
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")


def test_refusals_are_shown_as_readable_problem_details(page, photo_files, tmp_path, shots):
    broken = tmp_path / "broken.png"  # a PNG signature, then no readable header: the service refuses it
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x10" * 40)
    page.set_input_files("#structure", str(photo_files[0]))
    page.set_input_files("#appearance", str(broken))
    page.wait_for_function("() => document.querySelectorAll('.appearance-tile').length === 1")

    page.click("#submit")  # no API key: 401
    problem = page.locator(".run .problem")
    problem.wait_for(timeout=60_000)
    assert problem.locator("h3").inner_text() == "401 Unauthorized"
    assert "API key" in problem.locator(".detail").inner_text()
    assert page.is_visible("#api-key"), "a 401 opens the API key field"

    page.fill("#api-key", KEY)
    page.click("#submit")  # a broken PNG as the appearance: 400, naming the field, no Python repr
    problem = page.locator(".run .problem")
    problem.wait_for(timeout=60_000)
    heading = problem.locator("h3").inner_text()
    detail = problem.locator(".detail").inner_text()
    assert heading == "400 Bad Request", heading
    assert detail == "appearance: the png image is corrupt or truncated: its header cannot be read"
    assert problem.locator(".kind").inner_text() == "/problems/not-an-image"
    assert "{" not in problem.inner_text(), "shown as text, not raw JSON"
    page.screenshot(path=str(shots / "page-problem.png"), full_page=True)


def test_api_reference_pages_render_from_the_service_alone(browser, live_service):
    """Swagger UI and ReDoc render the operations from the service's own assets; nothing is loaded from
    elsewhere (ReDoc's footer logo on its CDN is blocked by the pages' Content-Security-Policy)."""
    context = browser.new_context()
    loaded: list[str] = []
    context.on("response", lambda response: loaded.append(response.url))
    page = context.new_page()
    try:
        page.goto(live_service.url + "/docs")
        page.wait_for_selector("#operations-default-submit_transfer", timeout=60_000)
        assert page.locator(".opblock").count() >= 6
        page.goto(live_service.url + "/redoc")
        page.get_by_text("Submit a transfer job").first.wait_for(timeout=60_000)
    finally:
        context.close()
    assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in loaded)
    assert any(url.endswith("/docs/assets/redoc.standalone.js") for url in loaded)
    outside = [url for url in loaded if not url.startswith((live_service.url, "data:", "blob:"))]
    assert not outside, outside
