"""The I/O the two clients do differently besides HTTP: sleeping, and writing a download to a file.

Each async name here has a sync twin that scripts/unasync_client.py maps it onto when it generates
``Client`` (client.py) from ``AsyncClient`` (aio.py): ``AsyncSleep`` -> ``Sleep``, ``asleep`` ->
``sleep``, ``awrite_atomically`` -> ``write_atomically``. These are the only lines written twice.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import anyio
import anyio.to_thread
import httpx

Sleep = Callable[[float], None]
AsyncSleep = Callable[[float], Awaitable[None]]

sleep: Sleep = time.sleep
asleep: AsyncSleep = anyio.sleep


def write_atomically(path: Path, response: httpx.Response) -> Path:
    """Stream the body into ``path`` through a temporary file beside it: never a partial file."""
    return _write_chunks_atomically(path, response.iter_bytes())


async def awrite_atomically(path: Path, response: httpx.Response) -> Path:
    """``write_atomically`` without blocking the event loop: the body is read on the loop, and the
    file is created, written and renamed into place in a worker thread. (A result is one image, so
    holding it in memory costs little, and one writer serves both clients.)"""
    body = await response.aread()
    return await anyio.to_thread.run_sync(_write_chunks_atomically, path, [body])


def _write_chunks_atomically(path: Path, chunks: Iterable[bytes]) -> Path:
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
    try:
        with open(temp, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return path
