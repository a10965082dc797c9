"""Pages for people: the try-it page at / and the API reference (Swagger UI at /docs, ReDoc at /redoc).

Everything they load is served by this process (the page from ``service/api/static``, the Swagger UI
and ReDoc bundles from the ``fastapi-offline`` package), so they work without Internet access.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

PAGE_DIR = Path(__file__).resolve().parent.parent / "static"
DOCS_ASSETS_DIR = Path(str(files("fastapi_offline") / "static"))
PAGE_ASSETS = "/static"
DOCS_ASSETS = "/docs/assets"
TITLE = "Q-Align appearance transfer"
#: The reference pages load nothing from elsewhere (ReDoc's footer would fetch a logo from its CDN).
SAME_ORIGIN_ONLY = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'"
}

router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> FileResponse:
    return FileResponse(PAGE_DIR / "index.html", media_type="text/html")


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title=f"{TITLE} - Swagger UI",
        swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        swagger_ui_parameters={"persistAuthorization": True},
    )
    page.headers.update(SAME_ORIGIN_ONLY)
    return page


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_redoc_html(
        openapi_url=f"{root}/openapi.json",
        title=f"{TITLE} - ReDoc",
        redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
        with_google_fonts=False,
    )
    page.headers.update(SAME_ORIGIN_ONLY)
    return page
