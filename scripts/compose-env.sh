#!/usr/bin/env bash
# Makes .env for docker compose from .env.example: every empty secret (REDIS_PASSWORD,
# MINIO_ROOT_USER, MINIO_ROOT_PASSWORD) gets a random value, so no deployment runs on credentials
# printed in a repository. An existing .env is left alone (delete it to start over).
#   scripts/compose-env.sh [ENV_FILE]     (default .env)
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-.env}
if [ -e "$target" ]; then
  echo "$target exists; not changed" >&2
  exit 0
fi
random() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }
umask 077
while IFS= read -r line; do
  case "$line" in
    REDIS_PASSWORD=|MINIO_ROOT_PASSWORD=) echo "${line}$(random)" ;;
    MINIO_ROOT_USER=) echo "${line}qalign-$(random | cut -c1-8)" ;;
    *) echo "$line" ;;
  esac
done <.env.example >"$target"
echo "wrote $target (mode 600) with random secrets; add QALIGN_API_KEYS ('qalign hash-key NAME')" >&2
