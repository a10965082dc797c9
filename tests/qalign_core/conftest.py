from __future__ import annotations

import pytest

from qalign_core.params import TransferParams


@pytest.fixture(scope="session")
def pipe(tiny_model_dir):
    from qalign_core.pipeline import QAlignPipeline

    return QAlignPipeline.from_pretrained(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def fast_params() -> TransferParams:
    """A short run that still crosses every schedule boundary: injection, alignment, masked AdaIN.

    Only ``steps`` changes: the schedule scales (skip 5, 11 iterations, injection at iterations 3-7,
    alignment at 8-10, AdaIN from 3).
    """
    return TransferParams(steps=16)
