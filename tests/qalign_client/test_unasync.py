"""The sync client is generated from the async one: qalign_client/client.py must be exactly what
scripts/unasync_client.py makes of qalign_client/aio.py today."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "unasync_client.py"
GENERATED = ROOT / "qalign_client" / "client.py"


def test_the_sync_client_is_generated_from_the_async_one(tmp_path):
    output = tmp_path / "client.py"
    subprocess.run([sys.executable, str(SCRIPT), "--output", str(output)], check=True, cwd=ROOT, timeout=120)
    expected, actual = output.read_text(), GENERATED.read_text()
    drift = "".join(
        difflib.unified_diff(
            actual.splitlines(keepends=True),
            expected.splitlines(keepends=True),
            "qalign_client/client.py (in the tree)",
            "qalign_client/client.py (generated from aio.py)",
        )
    )
    assert not drift, (
        "qalign_client/client.py has drifted from qalign_client/aio.py: edit aio.py only and run "
        f"`python scripts/unasync_client.py`.\n{drift[:4000]}"
    )
