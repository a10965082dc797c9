from __future__ import annotations

import pytest

from qalign_core.params import TransferParams


@pytest.fixture(scope="session")
def pipe(tiny_model_dir):
    from qalign_core.pipeline import QAlignPipeline

    return QAlignPipeline.from_pretrained(tiny_model_dir, device="cpu")


@pytest.fixture(scope="session")
def fast_params() -> TransferParams:
    """A short run that still crosses every schedule boundary: alignment, injection (step 5), AdaIN."""
    return TransferParams(
        steps=16, skip_steps=4, align_steps_fine=(4, 14), align_steps_coarse=(4, 10), adain_steps=(6, 16)
    )
