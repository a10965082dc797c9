"""``qalign serve``: uvicorn with our JSON logging."""

from __future__ import annotations

import logging

logger = logging.getLogger("qalign.api")


def serve(host: str, port: int) -> None:
    """Run the API; in embedded mode, refuse at once (one log line, exit 1) when another process
    holds the data directory, before uvicorn starts or the port is bound."""
    import uvicorn

    from service.logs import configure_logging
    from service.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level)
    if settings.embedded:
        from service.jobs.single_writer import DataDirLocked, hold_data_dir

        try:
            hold_data_dir(settings.data_dir)  # held for the process's life; the app shares it
        except DataDirLocked as exc:
            logger.error("not started: %s", exc)
            raise SystemExit(1) from None
    # One process: the embedded mode's worker thread and SQLite store are per process.
    uvicorn.run(
        "service.app:app",
        host=host,
        port=port,
        log_config=None,
        timeout_graceful_shutdown=30,
        log_level=settings.log_level.lower(),
    )
