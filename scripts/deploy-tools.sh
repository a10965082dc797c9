#!/usr/bin/env bash
# Validators of the Kubernetes manifests, in their own virtual environment (.venv-tools/): checkov
# pins many libraries (boto3, pydantic, ...) that must not move the project's own versions.
# Called by scripts/test.sh; tests/deploy/test_kubernetes.py finds the tools there.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=.venv-tools
CHECKOV=3.3.30
KUBERNETES_VALIDATE=1.37.0
stamp="$TOOLS/.installed-checkov-$CHECKOV-kv-$KUBERNETES_VALIDATE"
if [ ! -f "$stamp" ]; then
  # The project venv's interpreter (scripts/bootstrap.sh made it), else the system one.
  python=.venv/bin/python; [ -x "$python" ] || python=python3
  "$python" -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check \
    "checkov==$CHECKOV" "kubernetes-validate==$KUBERNETES_VALIDATE"
  touch "$stamp"
fi
