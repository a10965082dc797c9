"""Pages for people: the try-it page at / and the API reference (Swagger UI at /docs, ReDoc at /redoc),
and the icon browsers ask for (/favicon.ico; the page links ``static/favicon.svg``).

Everything they load is served by this process (the page from ``service/http/static``, the Swagger UI
and ReDoc bundles from the ``fastapi-offline`` package), so they work without Internet access.
"""

from __future__ import annotations

import io
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

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


@router.get("/favicon.ico")
def favicon() -> Response:
    """Browsers and tools ask for /favicon.ico whatever the page links: a real ICO (16, 32, 48 px)."""
    return Response(
        favicon_ico(), media_type="image/x-icon", headers={"Cache-Control": "public, max-age=86400"}
    )


@lru_cache(maxsize=1)
def favicon_ico() -> bytes:
    """static/favicon.svg's geometry (64-unit grid) drawn with Pillow at 4x and saved as an ICO, so
    the icon needs no binary file in the repository and no SVG renderer."""
    import numpy as np
    from PIL import Image, ImageDraw

    scale = 4
    side = 64 * scale
    ramp = np.linspace(0.0, 1.0, side)
    t = (ramp[None, :] + ramp[:, None]) / 2  # the SVG's diagonal gradient, #4f46e5 -> #9333ea
    start, end = np.array([0x4F, 0x46, 0xE5]), np.array([0x93, 0x33, 0xEA])
    colours = (start + (end - start) * t[..., None]).round().astype(np.uint8)
    icon = Image.fromarray(colours, "RGB").convert("RGBA")
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).rounded_rectangle((0, 0, side - 1, side - 1), radius=14 * scale, fill=255)
    icon.putalpha(mask)
    draw = ImageDraw.Draw(icon)

    def circle(cx: float, cy: float, r: float) -> tuple[float, float, float, float]:
        return ((cx - r) * scale, (cy - r) * scale, (cx + r) * scale, (cy + r) * scale)

    draw.ellipse(circle(39, 38, 15), fill="#fbbf24")
    draw.ellipse(circle(25, 26, 16.5), outline="#ffffff", width=5 * scale)  # r 14, stroke 5, centred
    buffer = io.BytesIO()
    icon.save(buffer, format="ICO", sizes=[(16, 16), (32, 32), (48, 48)])
    return buffer.getvalue()


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
