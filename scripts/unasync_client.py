"""Generate the sync client, qalign_client/client.py, from the async one, qalign_client/aio.py.

    python scripts/unasync_client.py                   # rewrite qalign_client/client.py
    python scripts/unasync_client.py --output FILE     # write it elsewhere (the drift test does)

unasync (PyPI) drops ``async``/``await`` and renames tokens: its own table
(``__aenter__``, ``AsyncIterator``...) plus REPLACEMENTS below. The result's imports are sorted
and it is formatted with the project's ruff settings, so it passes ``ruff check`` and ``ruff format
--check`` like any other file.
tests/qalign_client/test_unasync.py runs this into a temporary directory and fails on any drift.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import unasync

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "qalign_client" / "aio.py"
TARGET = ROOT / "qalign_client" / "client.py"
COMMAND = "python scripts/unasync_client.py"

#: Async names whose sync twin is not what unasync's own table gives.
REPLACEMENTS = {
    "AsyncClient": "Client",  # ours, and httpx's
    "AsyncBaseTransport": "BaseTransport",
    "aclose": "close",
    "aread": "read",
    "aiter_lines": "iter_lines",
    # qalign_client._io: the hand-written sync and async pairs.
    "AsyncSleep": "Sleep",
    "asleep": "sleep",
    "arun_blocking": "run_blocking",
}
BANNER = f"# Generated from qalign_client/aio.py by `{COMMAND}`: edit aio.py, not this file.\n"


def generate() -> str:
    """The text client.py must have."""
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch, SOURCE.name)
        shutil.copyfile(SOURCE, source)
        rule = unasync.Rule(
            fromdir=f"/{SOURCE.name}", todir=f"/{TARGET.name}", additional_replacements=REPLACEMENTS
        )
        unasync.unasync_files([str(source)], rules=[rule])
        text = Path(scratch, TARGET.name).read_text(encoding="utf-8")
    text = _ruff(["check", "--select", "I", "--fix-only", "--exit-zero"], BANNER + text)  # renamed imports
    return _ruff(["format"], text)


def _ruff(args: list[str], text: str) -> str:
    """``text`` through ruff, as if it were client.py (the project's settings apply)."""
    command = [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(TARGET), "-"]
    return subprocess.run(command, input=text, capture_output=True, text=True, cwd=ROOT, check=True).stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=TARGET, help="where to write (default: %(default)s)")
    args = parser.parse_args()
    args.output.write_text(generate(), encoding="utf-8")


if __name__ == "__main__":
    main()
