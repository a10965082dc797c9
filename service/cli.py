"""``qalign serve``: uvicorn with our JSON logging."""

from __future__ import annotations


def serve(host: str, port: int) -> None:
    import uvicorn

    from service.logs import configure_logging
    from service.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level)
    # One process: the embedded mode's worker thread and SQLite store are per process.
    uvicorn.run(
        "service.app:app",
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=30,
        log_level=settings.log_level.lower(),
    )
