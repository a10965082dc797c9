"""Synthetic attention with a known object, shared by the golden generator and the tests.

Pure torch and seeded, so CIA's environment and the project's build the same tensors. The golden
model's random weights never make self-segmentation find an object, so masked AdaIN is checked
against CIA's Segmentor on these: tokens attend within their region (a disc, the object, and four
background quadrants), and the object noun's token draws the disc's cross-attention.
"""

from __future__ import annotations

import torch

HEADS, DIM, TEXT_TOKENS = 2, 8, 77
#: Where "object" sits in "A photo of a object" with one token per word (after the start token).
NOUN_POSITION = 5


def regions(side: int, shift: int) -> torch.Tensor:
    """Labels ``[side, side]``: 0 = a disc (moved by ``shift`` on the half grid), 1-4 = quadrants.

    Drawn on the half grid and repeated 2x, so the two captured grids agree on every region.
    """
    half = side // 2
    yy, xx = torch.meshgrid(torch.arange(half), torch.arange(half), indexing="ij")
    quadrant = 1 + (yy >= half // 2).long() * 2 + (xx >= half // 2).long()
    centre = half / 2 - 0.5 + shift
    disc = (yy - centre) ** 2 + (xx - centre) ** 2 < (half / 3.2) ** 2
    return torch.where(disc, 0, quadrant).repeat_interleave(2, 0).repeat_interleave(2, 1)


def _embed(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[HEADS, tokens, DIM]``: a region code per token plus seeded noise."""
    codes = torch.eye(DIM)[:5] * 3.0
    x = codes[labels.flatten()].expand(HEADS, -1, -1)
    return x + 0.3 * torch.randn(HEADS, labels.numel(), DIM, generator=generator)


def rows_qk(side: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Queries and keys of rows (OUT, APP, STRUCT), ``[3, HEADS, tokens, DIM]``, at a latent side.

    ``self_*`` at ``side x side`` tokens, ``cross_*`` with queries at half the side and the 77 text
    tokens as keys. APP's disc is moved against STRUCT's, so their masks differ.
    """
    generator = torch.Generator().manual_seed(seed)
    shifts = (0, -2, 3)
    fine = [_embed(regions(side, s), generator) for s in shifts]
    coarse = [_embed(regions(side, s)[::2, ::2], generator) for s in shifts]
    text = 0.3 * torch.randn(3, HEADS, TEXT_TOKENS, DIM, generator=generator)
    text[:, :, NOUN_POSITION, 0] += 10.0  # the object's region code
    return {
        "self_q": torch.stack(fine),
        "self_k": torch.stack(fine),
        "cross_q": torch.stack(coarse),
        "cross_k": text,
    }


def latents(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and appearance latents ``[4, 64, 64]`` for masked AdaIN."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(4, 64, 64, generator=generator) * 1.5, torch.randn(
        4, 64, 64, generator=generator
    ) - 0.5


def attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d))`` as CIA's processor computes it: ``[rows, heads, N, M]``."""
    return torch.softmax(q @ k.transpose(-2, -1) / DIM**0.5, dim=-1)
