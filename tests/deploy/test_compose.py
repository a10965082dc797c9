"""Static checks of docker-compose.yml: structure (PyYAML), settings, and `docker compose config`.

No Docker engine is needed; `docker compose config` only parses, interpolates and validates the
file against the Compose specification schema.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

SERVICES = {"api", "worker", "redis", "minio", "createbucket"}
VOLUMES = {"redis-data", "minio-data", "model-cache"}

# The settings the service is built around; the table in docs/deployment.md must list at least
# these (the service adds its limit settings there too).
CORE_SETTINGS = {
    "QALIGN_MODEL",
    "QALIGN_DEVICE",
    "QALIGN_DTYPE",
    "QALIGN_REDIS_URL",
    "QALIGN_DATA_DIR",
    "QALIGN_S3_BUCKET",
    "QALIGN_S3_ENDPOINT_URL",
    "QALIGN_S3_PUBLIC_ENDPOINT_URL",
    "QALIGN_S3_REGION",
    "QALIGN_RESULT_URL_TTL",
}
# Compose-only interpolation variables (host ports); not settings of the qalign package.
COMPOSE_ONLY = {"QALIGN_API_PORT"}
# The secrets compose requires (no defaults); the CLI tests pass these.
TEST_SECRETS = {
    "REDIS_PASSWORD": "test-redis-password",
    "MINIO_ROOT_USER": "test-user",
    "MINIO_ROOT_PASSWORD": "test-minio-password",
}


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_of(service: dict) -> list[str]:
    command = service.get("command")
    return command.split() if isinstance(command, str) else list(command or [])


def option(command: list[str], name: str) -> str | None:
    for i, arg in enumerate(command):
        if arg == name and i + 1 < len(command):
            return command[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def default_of(value: str) -> str:
    """`${VAR:-default}` -> default; anything else unchanged."""
    match = re.fullmatch(r"\$\{[A-Z0-9_]+:?-([^}]*)\}", value)
    return match.group(1) if match else value


def duration_s(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


# --- structure --------------------------------------------------------------------------------


def test_services_present(compose):
    assert set(compose["services"]) >= SERVICES, set(compose["services"])


def test_api_runs_qalign_serve_with_several_workers(compose):
    """`qalign serve` (not bare uvicorn): the edge limits of service.http.edge apply."""
    api = compose["services"]["api"]
    command = command_of(api)
    assert command[:2] == ["qalign", "serve"]
    assert option(command, "--host") == "0.0.0.0"
    assert option(command, "--port") == "8000"
    assert int(option(command, "--workers")) >= 2
    assert any(str(p).endswith(":8000") for p in api["ports"])


def test_worker_is_celery_with_concurrency_one(compose):
    command = command_of(compose["services"]["worker"])
    assert command[:4] == ["celery", "-A", "worker.celery_app", "worker"]
    assert option(command, "--concurrency") == "1"


def test_worker_reserves_one_nvidia_gpu(compose):
    devices = compose["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    device = devices[0]
    assert device["driver"] == "nvidia"
    assert device["count"] == 1
    assert device["capabilities"] == ["gpu"]
    # A GPU reservation on the API would waste a GPU per API replica.
    assert "deploy" not in compose["services"]["api"]


def test_worker_gets_time_to_finish_a_job_on_stop(compose):
    worker = compose["services"]["worker"]
    assert duration_s(worker["stop_grace_period"]) >= 300
    assert worker.get("stop_signal", "SIGTERM") == "SIGTERM"  # Celery warm shutdown
    assert worker.get("init") is True and compose["services"]["api"].get("init") is True


def test_worker_environment(compose):
    env = env_of(compose["services"]["worker"])
    assert env["QALIGN_DEVICE"] == "cuda"
    assert default_of(env["QALIGN_DTYPE"]) == "float16"


def test_api_and_worker_share_image_and_settings(compose):
    api, worker = compose["services"]["api"], compose["services"]["worker"]
    assert api["image"] == worker["image"]
    assert api["build"] == worker["build"]
    api_env, worker_env = env_of(api), env_of(worker)
    expected = {
        "QALIGN_MODEL": "stable-diffusion-v1-5/stable-diffusion-v1-5",
        "QALIGN_S3_BUCKET": "qalign",
        "QALIGN_S3_ENDPOINT_URL": "http://minio:9000",
        "QALIGN_S3_PUBLIC_ENDPOINT_URL": "http://localhost:9000",
        "QALIGN_S3_REGION": "us-east-1",
        "QALIGN_RESULT_URL_TTL": "3600",
        "HF_HOME": "/models",
    }
    for env in (api_env, worker_env):
        assert {k: default_of(env.get(k, "")) for k in expected} == expected
        redis_url = env["QALIGN_REDIS_URL"]
        assert redis_url.startswith("redis://:${REDIS_PASSWORD:?") and redis_url.endswith("}@redis:6379/0")
        assert default_of(env["QALIGN_REQUIRE_API_KEYS"]) == "true", "open mode only when chosen"
    # Store credentials are the MinIO root credentials, through the same variables.
    minio_env = env_of(compose["services"]["minio"])
    for env in (api_env, worker_env):
        assert env["AWS_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
        assert env["AWS_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]


def test_redis_append_only_with_a_password_and_unpublished(compose):
    redis = compose["services"]["redis"]
    script = " ".join(command_of(redis))
    assert "exec redis-server - --appendonly yes" in script
    assert "requirepass $$REDIS_PASSWORD" in script, "the password on stdin, not in argv"
    env = env_of(redis)
    assert (
        env["REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?")
        and env["REDISCLI_AUTH"] == env["REDIS_PASSWORD"]
    )
    assert not redis.get("ports"), "Redis is reached on the compose network only"
    assert any(str(v).split(":")[0] == "redis-data" for v in redis["volumes"])


def test_no_credential_has_a_default(compose_text):
    for name in TEST_SECRETS:
        assert not re.search(r"\$\{" + name + r":?-", compose_text), f"{name} has a default"
        assert "${" + name + ":?" in compose_text


def test_minio_is_published_on_loopback_only(compose):
    for port in compose["services"]["minio"]["ports"]:
        assert str(port).startswith("${MINIO_BIND:-127.0.0.1}:"), port


def test_volumes(compose):
    assert set(compose["volumes"]) >= VOLUMES
    mounts = {name: [str(v) for v in s.get("volumes", [])] for name, s in compose["services"].items()}
    assert "redis-data:/data" in mounts["redis"]
    assert "minio-data:/data" in mounts["minio"]
    assert "model-cache:/models" in mounts["api"]
    assert "model-cache:/models" in mounts["worker"]


def test_minio_console_and_bucket_step(compose):
    minio = compose["services"]["minio"]
    command = command_of(minio)
    assert command[:2] == ["server", "/data"]
    assert option(command, "--console-address") == ":9001"
    assert any(str(p).endswith(":9001") for p in minio["ports"])

    bucket = compose["services"]["createbucket"]
    assert bucket["image"].split(":")[0].endswith("minio/mc")
    assert bucket["depends_on"]["minio"]["condition"] == "service_healthy"
    assert str(bucket.get("restart", "no")) == "no"
    command = bucket["command"]
    script = command if isinstance(command, str) else " ".join(command)
    assert "mc mb --ignore-existing" in script
    assert "QALIGN_S3_BUCKET" in script


@pytest.mark.parametrize("name", ["api", "worker"])
def test_depends_on_healthy_backends_and_bucket(compose, name):
    depends = compose["services"][name]["depends_on"]
    assert depends["redis"]["condition"] == "service_healthy"
    assert depends["minio"]["condition"] == "service_healthy"
    assert depends["createbucket"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("name", ["api", "worker", "redis", "minio"])
def test_long_running_services_have_healthchecks(compose, name):
    check = compose["services"][name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1
    assert not check.get("disable")
    for key in ("interval", "timeout", "retries"):
        assert key in check


def test_api_healthcheck_hits_healthz(compose):
    assert "/healthz" in " ".join(compose["services"]["api"]["healthcheck"]["test"])


def test_images_are_pinned(compose):
    for name, service in compose["services"].items():
        image = service["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} uses latest"


# --- settings and documentation ---------------------------------------------------------------


def test_settings_table_lists_the_core_settings(documented_settings):
    assert documented_settings >= CORE_SETTINGS, CORE_SETTINGS - documented_settings


def test_every_qalign_variable_in_compose_is_documented(compose_text, documented_settings):
    used = set(re.findall(r"\bQALIGN_[A-Z0-9_]+", compose_text)) - COMPOSE_ONLY
    undocumented = used - documented_settings
    assert not undocumented, (
        f"QALIGN_* variables used in docker-compose.yml but not in docs/deployment.md: {undocumented}"
    )


def test_compose_only_variables_are_not_passed_to_containers(compose):
    for name, service in compose["services"].items():
        assert not (COMPOSE_ONLY & set(env_of(service))), name


def test_env_example_documents_every_interpolated_variable(root, compose_text):
    # ${VAR}, ${VAR:-x}, ${VAR-x}; `$${VAR}` is an escaped, container-side reference.
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", compose_text))
    example = {
        line.split("=", 1)[0].strip()
        for line in (root / ".env.example").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    missing = interpolated - example
    assert not missing, f"interpolated in docker-compose.yml but missing from .env.example: {missing}"


# --- the Compose CLI (no daemon needed) -----------------------------------------------------------


def run_compose(compose_cmd: list[str], *args: str, cwd, secrets: bool = True) -> subprocess.CompletedProcess:
    env = {**clean_env(), **(TEST_SECRETS if secrets else {})}
    return subprocess.run([*compose_cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=60, env=env)


def clean_env() -> dict[str, str]:
    """The caller's environment without anything that would change interpolation."""
    drop = ("COMPOSE_", "DOCKER_HOST", "QALIGN_", "MINIO_", "HF_", "AWS_", "REDIS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


@pytest.mark.parametrize("env_file", [None, ".env.example"], ids=["defaults", "env-example"])
def test_docker_compose_config_is_valid(compose_cmd, root, env_file):
    args = ["--env-file", env_file] if env_file else []
    result = run_compose(compose_cmd, *args, "config", "-q", cwd=root)
    assert result.returncode == 0, result.stderr
    # e.g. `The "X" variable is not set. Defaulting to a blank string.`
    assert not re.search(r"level=warning|WARN", result.stderr), result.stderr


def test_docker_compose_config_resolves_anchors(compose_cmd, root):
    result = run_compose(compose_cmd, "config", "--format", "json", cwd=root)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    worker_env = model["services"]["worker"]["environment"]
    assert worker_env["QALIGN_REDIS_URL"] == f"redis://:{TEST_SECRETS['REDIS_PASSWORD']}@redis:6379/0"
    assert worker_env["QALIGN_REQUIRE_API_KEYS"] == "true"
    ports = {p["target"]: p for p in model["services"]["minio"]["ports"]}
    assert ports[9000]["host_ip"] == ports[9001]["host_ip"] == "127.0.0.1"
    assert "ports" not in model["services"]["redis"]
    assert worker_env["QALIGN_DEVICE"] == "cuda"
    assert model["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1


def test_multi_gpu_override_snippet_in_docs(compose_cmd, root, tmp_path):
    doc = (root / "docs" / "deployment.md").read_text()
    match = re.search(r"```yaml\n(# docker-compose\.gpus\.yml.*?)```", doc, re.S)
    assert match, "docs/deployment.md lost its docker-compose.gpus.yml snippet"
    shutil.copy(root / "docker-compose.yml", tmp_path / "docker-compose.yml")
    (tmp_path / "docker-compose.gpus.yml").write_text(match.group(1))
    result = run_compose(
        compose_cmd,
        "-f",
        "docker-compose.yml",
        "-f",
        "docker-compose.gpus.yml",
        "config",
        "--format",
        "json",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    for name, gpu in (("worker", "0"), ("worker-gpu1", "1")):
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices == [{"driver": "nvidia", "device_ids": [gpu], "capabilities": ["gpu"]}]
        assert services[name]["command"][:4] == ["celery", "-A", "worker.celery_app", "worker"]


@pytest.mark.parametrize("env_file", [None, ".env.example"], ids=["defaults", "env-example"])
def test_compose_stops_while_a_secret_is_missing(compose_cmd, root, env_file):
    """No fixed credentials: without the secrets (scripts/compose-env.sh makes them) nothing starts,
    and the error names each missing variable."""
    args = ["--env-file", env_file] if env_file else []
    result = run_compose(compose_cmd, *args, "config", "-q", cwd=root, secrets=False)
    assert result.returncode != 0
    for name in TEST_SECRETS:
        assert name in result.stderr and "scripts/compose-env.sh" in result.stderr, result.stderr


def test_compose_env_script_fills_every_secret(compose_cmd, root, tmp_path):
    target = tmp_path / "generated.env"
    done = subprocess.run(
        [str(root / "scripts" / "compose-env.sh"), str(target)], capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    values = dict(
        line.split("=", 1) for line in target.read_text().splitlines() if "=" in line and line[0] != "#"
    )
    assert all(len(values[name]) >= 12 for name in TEST_SECRETS), "random values"
    assert (target.stat().st_mode & 0o077) == 0, "readable by its owner only"
    result = run_compose(compose_cmd, "--env-file", str(target), "config", "-q", cwd=root, secrets=False)
    assert result.returncode == 0, result.stderr
