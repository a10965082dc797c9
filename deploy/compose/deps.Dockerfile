# Stand-ins for Redis and MinIO in the CPU compose smoke test (scripts/compose-smoke.sh): Debian's
# redis-server package and moto's S3 server, from the same local base image as the qalign image.
# Not for production: there, use Redis and MinIO (docker-compose.yml) or managed services.
#
#   docker build --network host --build-arg BASE_IMAGE=... --build-arg WHEELS_DIR=... \
#       -f deploy/compose/deps.Dockerfile .
ARG BASE_IMAGE=debian:bookworm-slim

# moto from the wheel directory of the build context (no index: nothing is downloaded); in a stage
# of its own so the wheels do not stay in a layer of the image.
FROM ${BASE_IMAGE} AS moto
ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/moto
ARG WHEELS_DIR
COPY ${WHEELS_DIR} /tmp/wheels/
# hadolint ignore=DL3013
RUN /opt/moto/bin/pip install --no-index --find-links /tmp/wheels --no-cache-dir "moto[server]>=5"

FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server python3.11 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 qalign \
    && useradd --uid 10001 --gid qalign --no-create-home --shell /usr/sbin/nologin qalign
COPY --from=moto /opt/moto /opt/moto
ENV PATH=/opt/moto/bin:$PATH
USER 10001:10001
WORKDIR /tmp
CMD ["redis-server", "--bind", "127.0.0.1", "--port", "6379"]
