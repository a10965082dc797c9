"""AdaIN of the output latent toward the appearance latent, plain or restricted to object masks.

CIA's formulas (utils/adain.py): per-channel mean and ``sqrt(unbiased variance + 1e-5)``, over the
whole latent or over the masked positions only; masked AdaIN changes the output inside its mask only.
"""

from __future__ import annotations

import torch

EPS = 1e-5


def mean_std(x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``x [C, h, w]``, shaped ``[C, 1, 1]``; over ``mask`` when given."""
    flat = x.reshape(x.shape[0], -1)
    if mask is not None:
        flat = flat[:, mask.reshape(-1).bool()]
    std = (flat.var(dim=1) + EPS).sqrt()
    return flat.mean(dim=1).view(-1, 1, 1), std.view(-1, 1, 1)


def adain(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Match the per-channel mean and std of ``x [C, h, w]`` to ``reference``."""
    mean_x, std_x = mean_std(x)
    mean_r, std_r = mean_std(reference)
    return (x - mean_x) / std_x * std_r + mean_r


def masked_adain(
    x: torch.Tensor, reference: torch.Tensor, x_mask: torch.Tensor, reference_mask: torch.Tensor
) -> torch.Tensor:
    """AdaIN with statistics of ``x`` over ``x_mask`` and of ``reference`` over ``reference_mask``.

    Only positions inside ``x_mask`` change. Each mask needs at least two positions (an unbiased
    variance): callers fall back to plain AdaIN otherwise.
    """
    mean_x, std_x = mean_std(x, x_mask)
    mean_r, std_r = mean_std(reference, reference_mask)
    styled = (x - mean_x) / std_x * std_r + mean_r
    mask = x_mask.to(x.dtype)
    return x * (1 - mask) + styled * mask
