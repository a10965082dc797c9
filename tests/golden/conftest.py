"""Shared by the golden tests: the golden model, its prompt, each module's golden file.

The golden tests also import ``synthetic`` (shared with make_golden.py) and ``goldens`` from this
folder.
"""

import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(DATA.parent))


@pytest.fixture(scope="module")
def golden(request) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of the test module's ``GOLDEN`` file."""
    with safe_open(str(request.module.GOLDEN), framework="pt") as handle:
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
        return tensors, handle.metadata()


@pytest.fixture(scope="session")
def pipe():
    from qalign_core.pipeline import QAlignPipeline

    return QAlignPipeline.from_pretrained(str(DATA / "model"), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def prompt(pipe, golden):
    from qalign_core.params import TransferParams

    params = TransferParams()
    assert params.effective_prompt == golden[1]["prompt"]
    with torch.inference_mode():
        return pipe.encode_prompt(params.effective_prompt)
