"""Fixtures shared by every test folder: the tiny model and two real photographs."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pytest
from net_helpers import IN_NETNS
from PIL import Image

TESTS = Path(__file__).resolve().parent
#: The tier ``./scripts/test.sh --quick`` leaves out (marker ``slow``), in one place: whole folders,
#: and the unit-test modules that take seconds or more per test (tiny-model transfers, a server or
#: a tool in a subprocess). Everything else is the quick tier: lint, types, the unit tests.
SLOW_FOLDERS = ("integration", "golden", "deploy", "bench")
SLOW_MODULES = (
    "qalign_cli/test_main.py",  # transfers through the CLI with the tiny model
    "qalign_core/test_pipeline.py",  # tiny-model transfers
    "qalign_core/test_backbones.py",  # tiny-model transfers, SD 1.5 and SDXL shapes
    "qalign_core/test_loading.py",  # saves and loads whole tiny models
    "qalign_core/test_processors.py",  # tiny-model runs with the alignment log
    "service/http/test_edge.py",  # `qalign serve` processes
    "service/test_logs.py",  # loads the tiny model in a subprocess
    "service/http/test_openapi.py",  # schemathesis over the whole document
    "service/http/test_openapi_client_generation.py",  # generates and runs a client
    "service/http/test_ssrf_in_netns.py",  # pytest again inside a network namespace
)


def mark_slow(items: list[pytest.Item]) -> None:
    """Mark the slow tier (see SLOW_FOLDERS, SLOW_MODULES; and every loopback-namespace launcher,
    which runs its module again in a subprocess); a listed module that no longer exists is an error,
    so the quick tier cannot silently grow."""
    missing = [name for name in SLOW_MODULES if not (TESTS / name).is_file()]
    if missing:
        raise pytest.UsageError(f"tests/conftest.py SLOW_MODULES lists missing files: {missing}")
    slow_modules = {TESTS / name for name in SLOW_MODULES}
    for item in items:
        path = Path(item.path)
        relative = path.relative_to(TESTS) if path.is_relative_to(TESTS) else None
        if relative is None:
            continue
        launcher = item.get_closest_marker("loopback_launcher") is not None
        if relative.parts[0] in SLOW_FOLDERS or path in slow_modules or launcher:
            item.add_marker(pytest.mark.slow)


def pytest_sessionstart(session):
    """Inside the namespace, refuse to run unless loopback is the only interface."""
    if IN_NETNS and [name for _index, name in socket.if_nameindex()] != ["lo"]:
        raise pytest.UsageError(f"QALIGN_IN_NETNS=1 but interfaces are {socket.if_nameindex()}")


def pytest_collection_modifyitems(config, items):
    """The slow tier's marker (``mark_slow``). Tests of a module marked ``loopback_only`` (it names
    non-loopback addresses) run only inside the loopback-only network namespace its launcher test
    starts (tests/net_helpers.py)."""
    mark_slow(items)
    if IN_NETNS:
        return
    skip = pytest.mark.skip(
        reason="runs inside a loopback-only network namespace (test_in_loopback_only_namespace)"
    )
    for item in items:
        if item.get_closest_marker("loopback_only") and not item.get_closest_marker("loopback_launcher"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    from qalign_core.testing import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


@pytest.fixture(scope="session")
def tiny_sdxl_model_dir(tmp_path_factory) -> str:
    """The tiny model in SDXL's shape (two text encoders, no attention on the latent's grid)."""
    from qalign_core.testing import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("models") / "tiny-sdxl", backbone="sdxl"))


@pytest.fixture(scope="session")
def tiny_models(tiny_model_dir, tiny_sdxl_model_dir) -> dict[str, str]:
    """Both tiny models by backbone name."""
    return {"sd15": tiny_model_dir, "sdxl": tiny_sdxl_model_dir}


@pytest.fixture(scope="session")
def photos() -> tuple[Image.Image, Image.Image]:
    """(structure, appearance): scikit-image's cat and coffee cup."""
    from skimage import data

    return Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())


@pytest.fixture(scope="session")
def photo_bytes(photos) -> tuple[bytes, bytes]:
    """The photos encoded as PNG and JPEG."""
    png, jpeg = io.BytesIO(), io.BytesIO()
    photos[0].save(png, format="PNG")
    photos[1].save(jpeg, format="JPEG", quality=90)
    return png.getvalue(), jpeg.getvalue()
