"""``qalign serve``: uvicorn with our JSON logging, and one "ready on http://HOST:PORT" line."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn

    from service.usecases.admission import Readiness

logger = logging.getLogger("qalign.api")


class ReadyAnnouncer:
    """Logs "ready on http://HOST:PORT" once the server listens and the readiness checks pass (the
    embedded model loaded; distributed: stores, broker and a live worker), and before that one line
    saying what it still waits for. uvicorn's "running on" comes earlier, while the model loads."""

    def __init__(
        self, server: uvicorn.Server, readiness: Readiness, host: str, interval: float = 1.0
    ) -> None:
        self.server, self.readiness, self.host, self.interval = server, readiness, host, interval

    def start(self) -> ReadyAnnouncer:
        threading.Thread(target=self._run, name="qalign-ready", daemon=True).start()
        return self

    def url(self) -> str:
        port = self.server.config.port
        for server in getattr(self.server, "servers", []):  # the bound port, also when asked for 0
            for sock in server.sockets:
                port = sock.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    def _run(self) -> None:
        while not self.server.started:
            if self.server.should_exit:
                return
            time.sleep(0.05)
        waiting_said = False
        while not self.server.should_exit:
            verdict = self.readiness.verdict(fresh=True)
            if verdict["ready"]:
                logger.info("ready on %s", self.url())
                return
            if not waiting_said:
                checks = verdict["checks"].items()
                failing = [f"{name}: {c.get('detail', 'down')}" for name, c in checks if not c["ok"]]
                logger.info("listening on %s; not ready yet (%s)", self.url(), "; ".join(failing))
                waiting_said = True
            time.sleep(self.interval)


def serve(host: str, port: int, *, workers: int = 1, graceful_shutdown_s: int = 30) -> None:
    """Run the API with the edge limits of service.http.edge (every start path comes through here: the
    image, compose and Kubernetes run ``qalign serve``). Embedded mode is one process and refuses
    at once (one log line, exit 1) when another process holds the data directory, before uvicorn
    starts or the port is bound."""
    import uvicorn

    from service.http.edge import uvicorn_options
    from service.logs import configure_logging
    from service.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level)
    if (refusal := settings.open_mode_refusal()) is not None:
        logger.error("not started: %s", refusal)
        raise SystemExit(1)
    # uvicorn's proxy handling is off: the app's ForwardedHeadersMiddleware (QALIGN_FORWARDED_ALLOW_IPS)
    # does it.
    common = {
        "host": host,
        "port": port,
        "log_config": None,
        "timeout_graceful_shutdown": graceful_shutdown_s,
        "log_level": settings.log_level.lower(),
        "proxy_headers": False,
        **uvicorn_options(settings, workers=workers),
    }
    if settings.embedded:
        if workers > 1:
            logger.error("not started: embedded mode (QALIGN_REDIS_URL unset) runs one process; --workers 1")
            raise SystemExit(1)
        from service.jobs.single_writer import DataDirLocked, hold_data_dir

        try:
            hold_data_dir(settings.data_dir)  # held for the process's life; the app shares it
        except DataDirLocked as exc:
            logger.error("not started: %s", exc)
            raise SystemExit(1) from None
    if workers > 1:  # stateless processes (jobs live in Redis and the store); each imports the app
        uvicorn.run("service.app:app", workers=workers, **common)
        return
    from service.app import app

    server = uvicorn.Server(uvicorn.Config(app, **common))
    ReadyAnnouncer(server, app.state.services.readiness, host).start()
    server.run()
