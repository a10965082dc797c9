# Stand-ins for Redis and MinIO in the CPU compose smoke test (scripts/compose-smoke.sh): Debian's
# redis-server package and moto's S3 server, from the same local base image as the qalign image.
# Not for production: there, use Redis and MinIO (docker-compose.yml) or managed services.
#
#   docker build --network host --build-arg BASE_IMAGE=... --build-arg WHEELS_DIR=... \
#       -f deploy/compose/deps.Dockerfile .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/moto \
    && groupadd --gid 10001 qalign \
    && useradd --uid 10001 --gid qalign --no-create-home --shell /usr/sbin/nologin qalign

# moto from the wheel directory of the build context (no index: nothing is downloaded).
ARG WHEELS_DIR
# hadolint ignore=DL3013
RUN --mount=type=bind,source=${WHEELS_DIR},target=/tmp/wheels \
    /opt/moto/bin/pip install --no-index --find-links /tmp/wheels --no-cache-dir "moto[server]>=5"

ENV PATH=/opt/moto/bin:$PATH
USER 10001:10001
WORKDIR /tmp
CMD ["redis-server", "--bind", "127.0.0.1", "--port", "6379"]
