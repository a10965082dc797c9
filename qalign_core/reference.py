"""Plain, materialised formulas of the aligned layer, written for clarity, not speed.

These are the ground truth that ``qalign_core.attention`` is tested against (P4, P5) and the
baseline the benchmarks compare with: they hold full tokens x tokens matrices in float32.
"""

from __future__ import annotations

import math

import torch


def qq_mapping_reference(q_out: torch.Tensor, q_app: torch.Tensor, *, per_head: bool = False) -> torch.Tensor:
    if per_head:
        a, b = q_out.float(), q_app.float()
    else:  # concatenate heads: [..., H, N, d] -> [..., N, H*d]
        a = q_out.float().transpose(-3, -2).flatten(-2)
        b = q_app.float().transpose(-3, -2).flatten(-2)
    dots = a @ b.transpose(-1, -2)
    norms: torch.Tensor = a.norm(dim=-1, keepdim=True) * b.norm(dim=-1, keepdim=True).transpose(-1, -2)
    return (dots / norms.clamp_min(1e-12)).argmax(dim=-1)


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, contrast_strength: float = 1.0
) -> torch.Tensor:
    c = contrast_strength
    weights = torch.softmax((q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1]), dim=-1)
    weights = torch.clip(c * weights - (c - 1) / k.shape[-2], 0.0, 1.0)
    return (weights @ v.float()).to(v.dtype)


def rearrange_reference(x: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """x[..., h, pi(i), :] by explicit indexing, one (batch, head) slice at a time."""
    *lead, tokens, dim = x.shape
    if mapping.dim() == x.dim() - 2:  # one mapping shared by all heads
        mapping = mapping.unsqueeze(-2).expand(*lead, mapping.shape[-1])
    flat_x, flat_map = x.reshape(-1, tokens, dim), mapping.reshape(-1, mapping.shape[-1])
    rows = [flat_x[b][flat_map[b]] for b in range(flat_x.shape[0])]
    return torch.stack(rows).reshape(*lead, mapping.shape[-1], dim)


def qalign_attention_reference(
    q_out: torch.Tensor,
    q_app: torch.Tensor,
    k_app: torch.Tensor,
    v_app: torch.Tensor,
    *,
    contrast_strength: float = 1.0,
    per_head: bool = False,
) -> torch.Tensor:
    mapping = qq_mapping_reference(q_out, q_app, per_head=per_head)
    return attention_reference(
        q_out,
        rearrange_reference(k_app, mapping),
        rearrange_reference(v_app, mapping),
        contrast_strength=contrast_strength,
    )


def cross_image_attention_reference(
    q_out: torch.Tensor, k_app: torch.Tensor, v_app: torch.Tensor, *, contrast_strength: float = 1.0
) -> torch.Tensor:
    return attention_reference(q_out, k_app, v_app, contrast_strength=contrast_strength)
