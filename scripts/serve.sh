#!/usr/bin/env bash
# The main job: the embedded service (API + in-process worker + local store) on 127.0.0.1:8000.
# QALIGN_MODEL selects the model (a Hugging Face id or a directory). Without it, the tiny
# random-weight model is built locally so the service runs offline (its images are not meaningful).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/bootstrap.sh
export QALIGN_DATA_DIR=${QALIGN_DATA_DIR:-$PWD/.qalign-data}
if [ -z "${QALIGN_MODEL:-}" ]; then
  export QALIGN_MODEL="$QALIGN_DATA_DIR/tiny-model"
  [ -f "$QALIGN_MODEL/model_index.json" ] || .venv/bin/qalign make-tiny-model "$QALIGN_MODEL"
  echo "QALIGN_MODEL not set: serving the tiny offline test model from $QALIGN_MODEL"
fi
exec .venv/bin/qalign serve --host "${QALIGN_HOST:-127.0.0.1}" --port "${QALIGN_PORT:-8000}"
