#
# One image for the qalign HTTP API and the Celery GPU worker.
#
#   docker build -t qalign:local .
#   API (default CMD):  docker run --init -p 8000:8000 qalign:local
#   worker:             docker run --init --gpus 1 qalign:local \
#                           celery -A worker.celery_app worker --concurrency 1 --loglevel INFO
#
# Stage 1 ("builder") creates a virtual environment in /opt/venv and installs the dependencies
# (everything but PyTorch from the hash-pinned lock file, requirements.lock; PyTorch from the CUDA
# wheel index), then the package itself.
# Stage 2 ("runtime") is the CUDA runtime image with Python 3.11 and a copy of /opt/venv: no
# compilers, no pip caches, no source tree.
#
# The CUDA user-space libraries PyTorch needs ship inside its wheels (nvidia-* packages); the
# base image only has to match the interpreter and provide a glibc the wheels accept. The host
# needs an NVIDIA driver new enough for CUDA ${CUDA_WHEEL} and the NVIDIA Container Toolkit.
#
# Build arguments (defaults = the production CUDA image):
#   BUILDER_IMAGE, CUDA_RUNTIME_IMAGE  base images of the two stages; any Debian/Ubuntu image with
#                                      the python3.11 and python3.11-venv packages works (the CPU
#                                      smoke test, scripts/compose-smoke.sh, uses a local Debian
#                                      bookworm made with debootstrap for both)
#   WHEELS_DIR                         air-gapped builds: a directory of the build context holding the
#                                      locked files (pip download --require-hashes --no-deps
#                                      -r requirements.lock) and a torch wheel; pip then installs from
#                                      it alone (--no-index), nothing is downloaded
#   TORCH_VERSION, CUDA_WHEEL          the PyTorch release and its CUDA wheel index
# BuildKit is required (RUN --mount); no "# syntax=" line, so no frontend image is pulled and the
# builder's built-in Dockerfile frontend is used (offline builds work).

ARG BUILDER_IMAGE=ubuntu:22.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04

# ---------------------------------------------------------------------------------------------
FROM ${BUILDER_IMAGE} AS builder

ARG TORCH_VERSION=2.6.0
ARG CUDA_WHEEL=cu124
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Ubuntu 22.04 ships Python 3.11 in "universe" (python3.11, python3.11-venv); the runtime stage
# installs the same interpreter package so the venv's /usr/bin/python3.11 link resolves there.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# --- dependency layer: only the lock file, so source edits do not reinstall torch -------------
# requirements.lock (scripts/lock.py, from pyproject.toml: [project].dependencies + the "service"
# extra) pins every distribution but torch with its sha256: installed with --require-hashes --no-deps,
# nothing unlocked or altered gets in. torch is pinned by version only: the CUDA build comes from the
# PyTorch index (or WHEELS_DIR) after the lock, with what that build needs beyond it (the CUDA
# libraries, triton, exact pins of its own), also by version; its hash cannot be locked offline
# (docs/security.md). The lock was resolved with the torch the test suite runs (its header says
# which): with that TORCH_VERSION nothing locked changes; an older one may replace a locked
# dependency of torch's (torch 2.6 pins sympy==1.13.1). pip check proves the result is consistent.
COPY requirements.lock ./
ARG WHEELS_DIR=""
# With WHEELS_DIR its wheels are copied to /tmp/wheels (a builder layer only; the runtime stage
# copies just the venv); without it the lock stands in and pip uses the indexes. (A bind mount
# would not copy, but Docker 20.10's built-in frontend does not expand ARGs in --mount.)
COPY ${WHEELS_DIR:-requirements.lock} /tmp/wheels/
# DL3013: every requirement is pinned; hadolint reads the "$@" option list as an unpinned package.
# hadolint ignore=DL3013
RUN --mount=type=cache,target=/root/.cache/pip \
    if [ -n "${WHEELS_DIR}" ]; then set -- --no-index --find-links /tmp/wheels; else set --; fi \
    && pip install "$@" "pip==24.3.1" "setuptools==75.6.0" "wheel==0.45.1" \
    && pip install "$@" --require-hashes --no-deps -r requirements.lock \
    && if [ -n "${WHEELS_DIR}" ]; then \
         pip install "$@" "torch==${TORCH_VERSION}"; \
       else \
         pip install --index-url "https://download.pytorch.org/whl/${CUDA_WHEEL}" "torch==${TORCH_VERSION}"; \
       fi \
    && pip check

# --- source layer ------------------------------------------------------------------------------
COPY . .
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
    && python -c "import importlib.util as u; assert all(u.find_spec(m) for m in ('qalign_core', 'qalign_cli', 'service', 'worker'))"

# ---------------------------------------------------------------------------------------------
FROM ${CUDA_RUNTIME_IMAGE} AS runtime

ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 ca-certificates \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 qalign \
    && useradd --uid 10001 --gid qalign --create-home --home-dir /home/qalign --shell /usr/sbin/nologin qalign \
    && mkdir -p /models /data \
    && chown qalign:qalign /models /data

COPY --from=builder /opt/venv /opt/venv

# HF_HOME: the Hugging Face cache (model weights) lives on a volume, shared by API and workers.
# QALIGN_DATA_DIR: the embedded-mode store when QALIGN_REDIS_URL is unset (single container).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/models \
    QALIGN_DATA_DIR=/data

VOLUME ["/models"]
WORKDIR /home/qalign
# Numeric ids so Kubernetes runAsNonRoot and host-side ownership checks can verify them.
USER 10001:10001

EXPOSE 8000

# Liveness of the API process. The worker service overrides this (see docker-compose.yml).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["qalign", "serve", "--host", "0.0.0.0", "--port", "8000"]
