"""Fixtures shared by every test folder: the tiny model and two real photographs."""

from __future__ import annotations

import io
import socket

import pytest
from net_helpers import IN_NETNS
from PIL import Image


def pytest_sessionstart(session):
    """Inside the namespace, refuse to run unless loopback is the only interface."""
    if IN_NETNS and [name for _index, name in socket.if_nameindex()] != ["lo"]:
        raise pytest.UsageError(f"QALIGN_IN_NETNS=1 but interfaces are {socket.if_nameindex()}")


def pytest_collection_modifyitems(config, items):
    """Tests of a module marked ``loopback_only`` (it names non-loopback addresses) run only inside the
    loopback-only network namespace its launcher test starts (tests/net_helpers.py)."""
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
