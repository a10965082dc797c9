#!/usr/bin/env bash
# Runs the README's test command RUNS times in a row (default 3) while BUSY processes (default 2, one
# per core here) keep the CPU saturated: the check that no test depends on an idle machine.
# Usage: scripts/suite-under-load.sh [RUNS] [-- pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
shift || true
[ "${1:-}" = "--" ] && shift
busy=${BUSY:-2}
pids=()
for _ in $(seq "$busy"); do
  python3 -c 'while True: pass' &
  pids+=($!)
done
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for run in $(seq "$runs"); do
  started=$(date +%s)
  ./scripts/test.sh "$@"
  echo "suite-under-load: run $run of $runs passed in $(( $(date +%s) - started )) s with $busy busy processes"
done
