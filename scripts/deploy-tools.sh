#!/usr/bin/env bash
# Validators of the Kubernetes manifests, in their own virtual environment (.venv-tools/): checkov
# pins many libraries (boto3, pydantic, ...) that must not move the project's own versions.
# Installs requirements-tools.lock (hash-checked; scripts/lock.py writes it, DEPLOY_TOOLS there names
# the versions). Called by scripts/test.sh; tests/deploy/test_kubernetes.py finds the tools there.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=.venv-tools
LOCK=requirements-tools.lock
stamp="$TOOLS/.installed-$(sha256sum "$LOCK" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  # The project venv's interpreter (scripts/bootstrap.sh made it; the lock was resolved with it).
  python=.venv/bin/python; [ -x "$python" ] || python=python3
  rm -rf "$TOOLS"
  "$python" -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check --require-hashes --no-deps -r "$LOCK"
  "$TOOLS/bin/pip" check --disable-pip-version-check >/dev/null
  touch "$stamp"
fi
