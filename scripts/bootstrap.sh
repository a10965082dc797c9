#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs the project with its service and test extras, from the
# lock file: requirements-test.lock pins every distribution (torch's CPU wheel included) with its
# sha256, installed with --require-hashes --no-deps, so the venv holds exactly what was locked
# (scripts/lock.py regenerates it; docs/security.md). Safe to run again: it reinstalls only when
# pyproject.toml or the lock changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.qalign-installed
want=$(cat pyproject.toml requirements-test.lock | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  # The installer itself (not a dependency of the project) comes from the configured indexes.
  .venv/bin/python -m pip install --quiet --upgrade pip
  if .venv/bin/python -c 'import platform, sys; sys.exit(sys.version_info[:2] != (3, 11) or platform.machine() != "x86_64" or sys.platform != "linux")'; then
    .venv/bin/python -m pip install --quiet --require-hashes --no-deps -r requirements-test.lock
    # The project itself, editable; its build backend (setuptools) is locked above.
    .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
  else
    # The lock holds the files for CPython 3.11 on Linux x86_64 only (the CPU torch wheel is cp311).
    echo "bootstrap: requirements-test.lock is for CPython 3.11 on Linux x86_64; installing from" \
      "pyproject.toml's ranges instead (unlocked, no hashes)" >&2
    .venv/bin/python -m pip install --quiet "torch==2.13.0"
    .venv/bin/python -m pip install --quiet -e ".[service,test]"
  fi
  # --no-deps trusts the lock to be complete: pip check says so (or names what is missing).
  .venv/bin/python -m pip check >/dev/null || { .venv/bin/python -m pip check >&2; exit 1; }
  echo "$want" > "$stamp"
fi
