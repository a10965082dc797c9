"""Helpers of the golden tests."""

import torch


def relative_l2(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """``|ours - reference| / |reference|`` in float32: the bound every golden comparison uses."""
    return float((ours.float() - reference.float()).norm() / reference.float().norm())
