"""Structured JSON logs (python-json-logger) with the job id on every line of a job's life.

Everything the service, the worker and the libraries under them write to stderr goes through one
JSON handler: Python warnings are captured into the stream, libraries that install their own
plain-text handlers (diffusers, transformers) are made to propagate instead, and progress bars
(tqdm, Hugging Face downloads) are switched off, so every stderr line is one JSON object.
The job id travels in a context variable, so helpers and libraries log normally and still get tagged.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

job_id_var: ContextVar[str | None] = ContextVar("qalign_job_id", default=None)

#: Environment switches that keep progress bars out of service logs (set unless the operator did).
QUIET_PROGRESS_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
#: Libraries that attach their own stderr handler (and some stop propagation) by default.
SELF_HANDLING_LIBRARIES = ("diffusers", "transformers", "huggingface_hub")
# tqdm reads TQDM_* when it is imported: set them before any library can import it.
for _name, _value in QUIET_PROGRESS_ENV.items():
    os.environ.setdefault(_name, _value)


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object per line: ts, level, logger, message, job_id and any ``extra`` fields."""

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "ts", "levelname": "level", "name": "logger"},
            json_default=str,
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        log_data["level"] = str(log_data.get("level", "")).lower()
        return log_data


class JobIdFilter(logging.Filter):
    """Adds ``job_id`` from the context (unless the record names one) to every record it passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "job_id", None):
            job_id = job_id_var.get()
            if job_id:
                record.job_id = job_id
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send all logging (ours, uvicorn's, celery's, libraries') through one JSON handler on stderr;
    idempotent, and safe to call again after a library was imported (it re-routes that one too)."""
    for name, value in QUIET_PROGRESS_ENV.items():
        os.environ.setdefault(name, value)
    logging.captureWarnings(True)
    root = logging.getLogger()
    if not any(isinstance(h.formatter, JsonFormatter) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler.addFilter(JobIdFilter())
        root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "py.warnings"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    route_library_logs()


def route_library_logs(*, load: bool = False) -> None:
    """diffusers and transformers log through our handler and show no progress bars: those already
    imported, or with ``load`` both (the worker, before it loads a model; the API never imports them).

    Their own API, not handler surgery: they add their stderr handler lazily, on first use, and
    these calls configure it first and then remove it for good.
    """
    for name in SELF_HANDLING_LIBRARIES:
        if name not in sys.modules and not load:
            continue
        with contextlib.suppress(Exception):  # their logging helpers moved between versions
            helpers = importlib.import_module(f"{name}.utils.logging")
            for call in ("disable_default_handler", "enable_propagation", "disable_progress_bar"):
                if hasattr(helpers, call):
                    getattr(helpers, call)()
        library = logging.getLogger(name)  # huggingface_hub adds its handler at import, with no helper
        library.handlers = [h for h in library.handlers if type(h) is not logging.StreamHandler]
        library.propagate = True


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tag every log line emitted inside the block (in this thread/task) with ``job_id``."""
    token = job_id_var.set(job_id)
    try:
        yield
    finally:
        job_id_var.reset(token)
