#!/usr/bin/env bash
# Run the benchmark suite on a CUDA machine, end to end, from a fresh checkout. Installs nothing
# from the network.
#
# Assumptions (checked below, with a clear message when one does not hold):
#   - a Python (>= 3.11) with torch built for CUDA, diffusers, transformers, safetensors, pillow,
#     numpy, pydantic and click already installed; choose it with PYTHON=/path/to/python
#     (default: python3 on PATH);
#   - a CUDA GPU visible to torch (about 40 GiB of GPU memory: the end-to-end benchmark holds two
#     copies of SDXL in float16 at 1024 px; SD 1.5 alone needs about 10 GiB);
#   - about 12 GiB of free disk in $TMPDIR: the SD 1.5- and SDXL-shaped random-weight model directories are written
#     there (no weights are downloaded; everything is built from configs).
# The suite runs from the repository root with it on PYTHONPATH; if qalign_core is still not
# importable there, the package is installed from this checkout with
# `pip install --no-deps -e .` (no dependency resolution, no index; needs setuptools>=68 present).
# Extra arguments go to `python -m bench` (e.g. --quick, --only layer). The table is printed last.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"

"$PYTHON" - <<'PY'
import sys
missing = []
for name in ("torch", "diffusers", "transformers", "safetensors", "PIL", "numpy", "pydantic", "click"):
    try:
        __import__(name)
    except ImportError:
        missing.append(name)
if missing:
    sys.exit(f"gpu.sh: missing Python packages (install them first, offline wheels are fine): {missing}")
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu.sh: torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda})")
print(f"gpu.sh: torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY

if ! "$PYTHON" -c "import qalign_core" 2>/dev/null; then
    echo "gpu.sh: qalign_core not importable; pip install --no-deps -e . (offline)"
    "$PYTHON" -m pip install --no-deps --no-build-isolation --no-index -e .
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
lscpu | grep -m1 "Model name" || true

LOG="bench/results/gpu-$(date -u +%Y%m%dT%H%M%SZ).log"
mkdir -p bench/results
# The suite prints its table (and the JSON path) last; the full log is kept next to the JSON.
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m bench --device cuda "$@" 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
