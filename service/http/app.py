"""The FastAPI application factory, and ``app`` (served as ``uvicorn service.app:app``).

Building the app reads settings and nothing else: no model is loaded and nothing is connected until
the app starts (lifespan) or a request arrives. Embedded mode starts its worker thread on startup.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from service.http.intake import RequestLimitMiddleware
from service.http.links import ForwardedHeadersMiddleware
from service.http.metrics import MetricsMiddleware
from service.http.openapi import install_openapi
from service.http.problems import install_problem_handlers
from service.http.routes import router, web
from service.http.security import SecurityHeadersMiddleware, install_cors, install_host_check
from service.http.services import Services
from service.jobs.runner import PipelineFactory
from service.logs import configure_logging
from service.settings import Settings

logger = logging.getLogger("qalign.api")


def api_description(settings: Settings) -> str:
    """The OpenAPI description: what the API does and the model this deployment serves."""
    from qalign_core.backbones import describe_model

    text = "Submit a structure and an appearance image, poll the job, download the result."
    backbone = describe_model(settings.model, settings.model_config_dir)
    served = f"This deployment serves `{settings.model}`"
    if backbone is None:
        return f"{text} {served}; its backbone, native size and sizes are in GET /readyz under `model`."
    return (
        f"{text} {served}: {backbone.title}, native size {backbone.native_size} px (the default `size`); "
        f"`size` takes a multiple of {backbone.size_unit} from {backbone.min_size} to {backbone.max_size}. "
        "GET /readyz shows what the live workers report under `model`."
    )


class OpenModeRefused(RuntimeError):
    """The settings ask for API keys and give none: the API does not start."""


def create_app(
    settings: Settings | None = None, *, pipeline_factory: PipelineFactory | None = None
) -> FastAPI:
    """``pipeline_factory(settings)`` replaces the model loader of the embedded worker (tests)."""
    settings = settings or Settings()
    if (refusal := settings.open_mode_refusal()) is not None:
        raise OpenModeRefused(refusal)
    services = Services.from_settings(settings, pipeline_factory=pipeline_factory)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)
        services.start()
        logger.info("api started", extra={"mode": "embedded" if settings.embedded else "distributed"})
        if not settings.embedded and not settings.public_base and not settings.allowed_host_names:
            logger.warning(
                "links in job objects and webhooks are built from each request's Host header: set "
                "QALIGN_PUBLIC_BASE_URL (or QALIGN_ALLOWED_HOSTS) so a caller cannot choose them"
            )
        try:
            yield
        finally:
            logger.info("api stopping")
            services.close()

    app = FastAPI(
        title="Q-Align appearance transfer",
        version="1",
        description=api_description(settings),
        # Operation ids are the route functions' names (submit_transfer, get_job, get_result), the
        # names a person would write, for generated clients (FastAPI's default appends path and method).
        generate_unique_id_function=lambda route: route.name,
        lifespan=lifespan,
        docs_url=None,  # served by routes.web from local assets (no CDN)
        redoc_url=None,
    )
    app.state.services = services
    install_problem_handlers(app)
    app.include_router(router)
    app.mount(web.PAGE_ASSETS, StaticFiles(directory=web.PAGE_DIR), name="page-assets")
    app.mount(web.DOCS_ASSETS, StaticFiles(directory=web.DOCS_ASSETS_DIR), name="docs-assets")
    install_openapi(app, settings)
    app.add_middleware(
        RequestLimitMiddleware,
        body_limit=settings.request_limit,
        json_limit=settings.json_limit,
        max_headers=settings.max_header_count,
    )
    app.add_middleware(MetricsMiddleware, metrics=services.metrics)
    install_host_check(app, settings)
    app.add_middleware(ForwardedHeadersMiddleware, trusted=settings.forwarded_allow_ips)
    app.add_middleware(SecurityHeadersMiddleware)
    install_cors(app, settings)
    return app


app = create_app()
