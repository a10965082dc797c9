# syntax=docker/dockerfile:1.7
#
# One image for the qalign HTTP API and the Celery GPU worker.
#
#   docker build -t qalign:local .
#   API (default CMD):  docker run --init -p 8000:8000 qalign:local
#   worker:             docker run --init --gpus 1 qalign:local \
#                           celery -A worker.celery_app worker --concurrency 1 --loglevel INFO
#
# Stage 1 ("builder") creates a virtual environment in /opt/venv and installs the dependencies
# (PyTorch from the CUDA wheel index, everything else from PyPI), then the package itself.
# Stage 2 ("runtime") is the CUDA runtime image with Python 3.11 and a copy of /opt/venv: no
# compilers, no pip caches, no source tree.
#
# The CUDA user-space libraries PyTorch needs ship inside its wheels (nvidia-* packages); the
# base image only has to match the interpreter and provide a glibc the wheels accept. The host
# needs an NVIDIA driver new enough for CUDA ${CUDA_WHEEL} and the NVIDIA Container Toolkit.

ARG UBUNTU_VERSION=22.04
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04

# ---------------------------------------------------------------------------------------------
FROM ubuntu:${UBUNTU_VERSION} AS builder

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

# --- dependency layer: only pyproject.toml, so source edits do not reinstall torch -----------
COPY pyproject.toml ./
# Requirements = [project].dependencies + the "service" extra, read from pyproject.toml.
# torch is installed first from the CUDA wheel index and pinned by a constraint so the PyPI
# install that follows keeps the CUDA build.
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['service']))" > /tmp/requirements.txt \
    && echo "torch==${TORCH_VERSION}" > /tmp/constraints.txt \
    && pip install "pip==24.3.1" "setuptools==75.6.0" "wheel==0.45.1" \
    && pip install --index-url "https://download.pytorch.org/whl/${CUDA_WHEEL}" "torch==${TORCH_VERSION}" \
    && pip install -r /tmp/requirements.txt -c /tmp/constraints.txt

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
