"""The page at / in a real headless Chromium (Debian's package, driven by Playwright): two photos in,
live progress from the events stream, the result rendered at its size; refusals shown readably.

The embedded service (tiny model) runs in this process on a free loopback port with an API key, so
the page's key field and its fetch()-based events reader (EventSource cannot send a key) are used.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import httpx
import pytest
from testkit import LiveService

from service.auth import hash_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

KEY = "page-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
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
        pytest.skip("no Chromium found (/usr/bin/chromium): apt-get install chromium (scripts/test.sh does)")
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
    )
    with LiveService(create_app(settings)) as live:
        yield live


@pytest.fixture
def page(browser, live_service):
    context = browser.new_context()
    opened = context.new_page()
    opened.goto(live_service.url + "/")
    yield opened
    context.close()


@pytest.fixture(scope="module")
def photo_files(photo_bytes, tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("photos")
    structure, appearance = folder / "cat.png", folder / "coffee.jpg"
    structure.write_bytes(photo_bytes[0])
    appearance.write_bytes(photo_bytes[1])
    return structure, appearance


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


def test_two_photos_give_a_rendered_result_with_live_progress(page, live_service, photo_files, tmp_path):
    drop_file(page, "#structure-drop", photo_files[0], "image/png")  # dropped
    page.set_input_files("#appearance", str(photo_files[1]))  # chosen
    page.fill("#steps", "6")
    page.fill("#seed", "3")
    page.fill("#api-key", KEY)
    page.check("#compare")  # Q-Align and CIA side by side: two jobs
    assert page.is_visible("#structure-preview") and page.is_visible("#appearance-preview")
    page.click("#submit")

    runs = page.locator(".run")
    runs.first.wait_for()
    assert runs.count() == 2
    for method in ("qalign", "cross_image"):
        page.wait_for_selector(f'.run[data-method="{method}"][data-state="shown"]', timeout=300_000)
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

    for method in ("qalign", "cross_image"):
        run = page.locator(f'.run[data-method="{method}"]')
        assert run.get_attribute("data-status") == "succeeded"
        size = run.locator(".result").evaluate("img => [img.naturalWidth, img.naturalHeight]")
        job_id = run.locator(".download").get_attribute("download").rsplit("-", 1)[1].split(".")[0]
        job = httpx.get(f"{live_service.url}/jobs/{job_id}", headers=AUTH).json()
        params = job["params"]
        assert params["method"] == method and params["steps"] == 6 and params["seed"] == 3
        assert size == [job["result"]["width"], job["result"]["height"]] and size[0] > 0
        assert run.locator(".size").inner_text() == f"{size[0]} × {size[1]}"
        assert run.locator(".download").get_attribute("href").startswith("blob:")
    assert (tmp_path / "page.png").stat().st_size > 0
    # The progress came from the events stream: the page opened it (the service counts open streams).
    events = [r for r in page.evaluate("performance.getEntriesByType('resource').map(e => e.name)")]
    assert sum("/events" in name for name in events) >= 2, events


def test_refusals_are_shown_as_readable_problem_details(page, photo_files, tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    page.set_input_files("#structure", str(photo_files[0]))
    page.set_input_files("#appearance", str(text_file))

    page.click("#submit")  # no API key: 401
    problem = page.locator(".run .problem")
    problem.wait_for(timeout=60_000)
    assert problem.locator("h3").inner_text() == "401 Unauthorized"
    assert "API key" in problem.locator(".detail").inner_text()

    page.fill("#api-key", KEY)
    page.click("#submit")  # a text file as the appearance: 400, naming the field
    problem = page.locator(".run .problem")
    problem.wait_for(timeout=60_000)
    heading = problem.locator("h3").inner_text()
    detail = problem.locator(".detail").inner_text()
    assert heading == "400 Bad Request", heading
    assert detail == "appearance: not an image (send a PNG, JPEG or WebP file)"
    assert problem.locator(".kind").inner_text() == "/problems/not-an-image"
    assert "{" not in problem.inner_text(), "shown as text, not raw JSON"
    page.screenshot(path=str(tmp_path / "problem.png"), full_page=True)


def test_api_reference_pages_render_from_the_service_alone(browser, live_service):
    """Swagger UI and ReDoc render the operations from the service's own assets; nothing is loaded from
    elsewhere (ReDoc's footer logo on its CDN is blocked by the pages' Content-Security-Policy)."""
    context = browser.new_context()
    loaded: list[str] = []
    context.on("response", lambda response: loaded.append(response.url))
    page = context.new_page()
    try:
        page.goto(live_service.url + "/docs")
        page.wait_for_selector("#operations-default-submit_transfer_transfer_post", timeout=60_000)
        assert page.locator(".opblock").count() >= 6
        page.goto(live_service.url + "/redoc")
        page.get_by_text("Submit a transfer job").first.wait_for(timeout=60_000)
    finally:
        context.close()
    assert any(url.endswith("/docs/assets/swagger-ui-bundle.js") for url in loaded)
    assert any(url.endswith("/docs/assets/redoc.standalone.js") for url in loaded)
    outside = [url for url in loaded if not url.startswith((live_service.url, "data:", "blob:"))]
    assert not outside, outside
