#!/usr/bin/env bash
# The project's test command: installs what it needs, lints, type-checks, runs every test (CPU, no
# network). Arguments go to pytest (e.g. a test file, -k, -x).
#
#   ./scripts/test.sh --quick [pytest args]   the edit loop's tier: lint, types and the unit tests
#       (pytest -m "not integration and not slow": no Celery worker, moto server, compose stack,
#       browser, tiny-model transfer or golden image), nothing installed beyond .venv; a few
#       minutes on a 2-core machine (docs/performance.md). The full command still runs everything.
set -euo pipefail
cd "$(dirname "$0")/.."

tier=()
quick=false
if [ "${1:-}" = "--quick" ]; then
  quick=true
  tier=(-m "not integration and not slow")
  shift
fi

./scripts/bootstrap.sh
if [ "$quick" = false ]; then
  # checkov and kubernetes-validate for tests/deploy/test_kubernetes.py, in .venv-tools/.
  ./scripts/deploy-tools.sh
fi
# Integration tests (and the Redis backend's unit tests) start their own redis-server on a free
# loopback port; install it if absent.
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is required by the integration tests: install it (e.g. apt-get install redis-server)" >&2
    exit 1
  fi
fi
# The web page's test drives Debian's Chromium (Playwright cannot download its own browsers here).
# Where QALIGN_REQUIRE_TOOLS is set (.ci/run sets it) a missing Chromium fails the run.
if [ "$quick" = false ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  elif [[ "${QALIGN_REQUIRE_TOOLS:-}" =~ ^[[:space:]]*(1|[Tt][Rr][Uu][Ee]|[Yy][Ee][Ss]|[Oo][Nn])[[:space:]]*$ ]]; then
    echo "chromium not found and QALIGN_REQUIRE_TOOLS is set: install it (apt-get install chromium)" >&2
    exit 1
  else
    echo "chromium not found: the web page test will be skipped (install it: apt-get install chromium)" >&2
  fi
fi
.venv/bin/ruff check .
# Strict type check of qalign_core, qalign_schema, qalign_client, qalign_cli, service and worker ([tool.mypy]
# in pyproject.toml); its cache in .mypy_cache makes a re-run take seconds.
.venv/bin/python -m mypy
# tests/deploy/test_compose_smoke.py runs scripts/compose-smoke.sh: it installs docker.io if needed,
# builds the image and runs the compose stack on the CPU (skipped, with the reason, where no
# container runtime can start; QALIGN_SKIP_COMPOSE_SMOKE=1 skips it on purpose).
.venv/bin/python -m pytest -q ${tier[@]+"${tier[@]}"} "$@"
