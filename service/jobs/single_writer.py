"""One embedded writer per data directory: an exclusive file lock in DATA_DIR.

The embedded mode's queue is the SQLite job table and its worker a thread of the API process, so
two processes on one data directory would both recover and run the same jobs. The first process
holds ``DATA_DIR/embedded.lock`` (``fcntl.flock``, released by the kernel when the process dies,
however it dies); a second one is refused with a one-line error naming the holder (host, pid and
since when), which the holder wrote into the file.

Within one process the lock is shared (counted): several apps on one data directory in one process
(tests) hold it together, and it is released when the last one lets go.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path

LOCK_NAME = "embedded.lock"


class DataDirLocked(Exception):
    """Another live process holds the data directory; the message is the one line to print."""


class DataDirLock:
    """The exclusive lock of one data directory, held through an open file descriptor."""

    def __init__(self, data_dir: Path | str) -> None:
        self.path = Path(data_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise DataDirLocked naming the holder; never waits."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise DataDirLocked(
                f"data directory {str(self.path.parent)!r} is in use by another embedded service "
                f"({holder}); stop it, or give this one another QALIGN_DATA_DIR"
            ) from None
        except OSError:
            os.close(fd)
            raise
        since = datetime.now(UTC).isoformat(timespec="seconds")
        holder = f"host {socket.gethostname()}, pid {os.getpid()}, since {since}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        self._fd = fd

    def release(self) -> None:
        """Let go (the file stays: deleting it would race with a process that just opened it)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the descriptor releases the flock


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 512, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "holder unknown: it has not written its name yet"


_held: dict[Path, tuple[DataDirLock, int]] = {}
_held_lock = threading.Lock()


def hold_data_dir(data_dir: Path | str) -> Path:
    """Acquire this process's share of the data directory's lock; the key to pass to ``let_go``."""
    key = Path(data_dir).resolve()
    with _held_lock:
        lock, users = _held.get(key, (None, 0))
        if lock is None:
            lock = DataDirLock(key)
            lock.acquire()
        _held[key] = (lock, users + 1)
    return key


def let_go(key: Path) -> None:
    """Give back one share taken by ``hold_data_dir``; the last share releases the lock."""
    with _held_lock:
        lock, users = _held.get(key, (None, 0))
        if lock is None:
            return
        if users <= 1:
            del _held[key]
            lock.release()
        else:
            _held[key] = (lock, users - 1)
