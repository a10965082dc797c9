"""Fixtures shared by every test folder: the tiny model and two real photographs."""

from __future__ import annotations

import io

import pytest
from PIL import Image


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    from qalign_core.testing import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("models") / "tiny"))


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
