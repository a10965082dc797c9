#!/usr/bin/env bash
# The project's test command: installs what it needs, lints, runs every test (CPU, no network).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/bootstrap.sh
# checkov and kubernetes-validate for tests/deploy/test_kubernetes.py, in .venv-tools/.
./scripts/deploy-tools.sh
# Integration tests start their own redis-server on a free loopback port; install it if absent.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is required by the integration tests: install it (e.g. apt-get install redis-server)" >&2
    exit 1
  fi
fi
# The web page's test drives Debian's Chromium (Playwright cannot download its own browsers here).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "chromium not found: the web page test will be skipped (install it: apt-get install chromium)" >&2
  fi
fi
.venv/bin/ruff check .
# Strict type check of qalign_core, qalign_schema, qalign_client and service ([tool.mypy] in
# pyproject.toml); its cache in .mypy_cache makes a re-run take seconds.
.venv/bin/python -m mypy
# tests/deploy/test_compose_smoke.py runs scripts/compose-smoke.sh: it installs docker.io if needed,
# builds the image and runs the compose stack on the CPU (skipped, with the reason, where no
# container runtime can start; QALIGN_SKIP_COMPOSE_SMOKE=1 skips it on purpose).
.venv/bin/python -m pytest -q "$@"
