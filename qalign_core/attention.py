"""The aligned self-attention layer: Q-Align and the Cross-Image Attention (CIA) baseline.

Tensors are ``[..., heads, tokens, head_dim]``. Nothing of shape tokens x tokens is held whole:
the query-query argmax and the contrast attention both run over chunks of query rows, and the
contrast-free attention goes through ``scaled_dot_product_attention`` (fused kernels where the
device has them). ``qalign_core.reference`` holds the plain, materialised formulas these must equal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Elements of one chunk's score block (query rows x keys x heads x batch); 2**24 float32 = 64 MiB.
DEFAULT_CHUNK_ELEMENTS = 2**24


def _rows_per_chunk(total_rows: int, elements_per_row: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return chunk_size
    return max(1, min(total_rows, DEFAULT_CHUNK_ELEMENTS // max(1, elements_per_row)))


def _concat_heads(x: torch.Tensor) -> torch.Tensor:
    """[..., H, N, d] -> [..., N, H*d]: the full query vector of each token."""
    *lead, heads, tokens, dim = x.shape
    return x.transpose(-3, -2).reshape(*lead, tokens, heads * dim)


def qq_mapping(
    q_out: torch.Tensor,
    q_app: torch.Tensor,
    *,
    per_head: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Query-query alignment: for each output token, the appearance token with the most similar query.

    Cosine similarity of the full query vectors (all heads) by default, or per head with
    ``per_head=True``. Computed in float32 whatever the input dtype, so half precision cannot flip
    the argmax through rounding of the norms. Ties go to the lowest appearance index.

    Returns a LongTensor ``[..., N]`` (``[..., H, N]`` per head).
    """
    if q_out.shape[:-2] != q_app.shape[:-2] or q_out.shape[-1] != q_app.shape[-1]:
        raise ValueError(f"q_out {tuple(q_out.shape)} and q_app {tuple(q_app.shape)} do not match")
    if per_head:
        a, b = q_out.float(), q_app.float()
    else:
        a, b = _concat_heads(q_out.float()), _concat_heads(q_app.float())
    a = F.normalize(a, dim=-1)
    b_t = F.normalize(b, dim=-1).transpose(-1, -2)
    rows = a.shape[-2]
    step = _rows_per_chunk(rows, b_t.shape[-1] * math.prod(a.shape[:-2]), chunk_size)
    return torch.cat([(a[..., s : s + step, :] @ b_t).argmax(dim=-1) for s in range(0, rows, step)], dim=-1)


def gather_tokens(x: torch.Tensor, mapping: torch.Tensor) -> torch.Tensor:
    """Key-value rearrangement: ``out[..., h, i, :] = x[..., h, mapping[..., i], :]``.

    ``mapping`` is ``[..., N]`` (shared by all heads) or ``[..., H, N]`` (one per head).
    """
    if mapping.dim() == x.dim() - 2:
        mapping = mapping.unsqueeze(-2).expand(*x.shape[:-2], mapping.shape[-1])
    index = mapping.unsqueeze(-1).expand(*mapping.shape, x.shape[-1])
    return torch.gather(x, -2, index)


def contrast_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    contrast_strength: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``clip(c*softmax(q k^T/sqrt(d)) - (c-1)/n_keys, 0, 1) @ v``, CIA's contrast operation.

    With ``c == 1`` the clip is a no-op and the call is one fused SDPA. Otherwise the softmax rows
    are built a chunk of queries at a time (softmax in float32), so memory stays bounded.
    """
    if contrast_strength == 1.0:
        return F.scaled_dot_product_attention(q, k, v)
    c = float(contrast_strength)
    n_keys = k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1])
    k_t = k.transpose(-1, -2)
    rows = q.shape[-2]
    step = _rows_per_chunk(rows, n_keys * math.prod(q.shape[:-2]), chunk_size)
    out = []
    for s in range(0, rows, step):
        # Softmax in place (float32): one score block alive per chunk, not a second for its softmax.
        weights = (q[..., s : s + step, :] @ k_t).float().mul_(scale)
        weights.sub_(weights.amax(dim=-1, keepdim=True)).exp_()
        weights.div_(weights.sum(dim=-1, keepdim=True))
        weights.mul_(c).sub_((c - 1.0) / n_keys).clamp_(0.0, 1.0)
        out.append(weights.to(v.dtype) @ v)
    return torch.cat(out, dim=-2)


def qalign_attention(
    q_out: torch.Tensor,
    q_app: torch.Tensor,
    k_app: torch.Tensor,
    v_app: torch.Tensor,
    *,
    contrast_strength: float = 1.0,
    per_head: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """One Q-Align layer: Q-Q alignment, K-V rearrangement, attention refinement.

    Returns ``[..., H, N, d]``, laid out like the output (structure) grid.
    """
    mapping = qq_mapping(q_out, q_app, per_head=per_head, chunk_size=chunk_size)
    return contrast_attention(
        q_out,
        gather_tokens(k_app, mapping),
        gather_tokens(v_app, mapping),
        contrast_strength=contrast_strength,
        chunk_size=chunk_size,
    )


def cross_image_attention(
    q_out: torch.Tensor,
    k_app: torch.Tensor,
    v_app: torch.Tensor,
    *,
    contrast_strength: float = 1.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """The CIA baseline layer: output queries attend over the appearance keys and values."""
    return contrast_attention(q_out, k_app, v_app, contrast_strength=contrast_strength, chunk_size=chunk_size)


def attention_leakage(
    q_out: torch.Tensor,
    q_app: torch.Tensor,
    k_app: torch.Tensor,
    structure_mask: torch.Tensor,
    appearance_mask: torch.Tensor,
    *,
    method: str = "qalign",
    contrast_strength: float = 1.0,
    per_head: bool = False,
) -> float:
    """Mean attention mass that object queries put on appearance background tokens (lower is better).

    ``structure_mask`` ``[N]`` and ``appearance_mask`` ``[M]`` are True on the object. For Q-Align a
    key ``k~[j]`` counts as background when its source token ``pi(j)`` is background. A diagnostic
    for one layer call: it materialises the attention of the object queries only.
    """
    c = float(contrast_strength)
    if method == "qalign":
        mapping = qq_mapping(q_out, q_app, per_head=per_head)
        keys = gather_tokens(k_app, mapping)
        background = ~appearance_mask[mapping]
    elif method == "cross_image":
        keys = k_app
        background = ~appearance_mask
    else:
        raise ValueError(f"method must be 'qalign' or 'cross_image', got {method!r}")
    weights = ((q_out @ keys.transpose(-1, -2)).float() / math.sqrt(q_out.shape[-1])).softmax(dim=-1)
    weights = (weights * c - (c - 1.0) / keys.shape[-2]).clamp(0.0, 1.0)
    background = background.to(weights.dtype)
    mass = (weights * background.unsqueeze(-2)).sum(dim=-1) if background.dim() > 1 else weights @ background
    return float(mass[..., structure_mask].mean())
