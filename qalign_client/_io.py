"""What the two clients do differently besides HTTP: sleeping, and running blocking work (reading the
input images, writing a download) where it cannot stall an event loop.

Each async name here has a sync twin that scripts/unasync_client.py maps it onto when it generates
``Client`` (client.py) from ``AsyncClient`` (aio.py): ``AsyncSleep`` -> ``Sleep``, ``asleep`` ->
``sleep``, ``arun_blocking`` -> ``run_blocking``. These are the only lines written twice.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")
Sleep = Callable[[float], None]
AsyncSleep = Callable[[float], Awaitable[None]]

sleep: Sleep = time.sleep
asleep: AsyncSleep = anyio.sleep


def run_blocking(function: Callable[[], T]) -> T:
    """Call ``function`` here: a sync caller blocks anyway."""
    return function()


async def arun_blocking(function: Callable[[], T]) -> T:
    """Call ``function`` in a worker thread, so the event loop goes on while it reads or writes files."""
    return await anyio.to_thread.run_sync(function)


def write_atomically(path: Path, body: bytes) -> Path:
    """Write ``body`` to a temporary file beside ``path`` and rename it into place: never a partial
    file, and no stray temporary file when the write fails."""
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        temp.write_bytes(body)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path
