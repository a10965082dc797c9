"""Properties P1-P5 of docs/algorithm.md on random float32 inputs."""

from __future__ import annotations

import itertools

import pytest
import torch

from qalign_core.attention import (
    attention_leakage,
    contrast_attention,
    cross_image_attention,
    gather_tokens,
    qalign_attention,
    qq_mapping,
)
from qalign_core.reference import (
    cross_image_attention_reference,
    qalign_attention_reference,
    qq_mapping_reference,
)

SHAPES = [(1, 16, 8), (2, 64, 16), (8, 100, 40), (2, 3, 4, 32, 8)]  # [..., heads, tokens, dim]
CONTRASTS = [1.0, 1.67, 3.0]


def _rand(shape, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(4)]


def _rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("contrast", CONTRASTS)
def test_p1_permuting_appearance_tokens_leaves_output_unchanged(shape, per_head, contrast):
    q_out, q_app, k_app, v_app = _rand(shape, 1)
    perm = torch.randperm(shape[-2], generator=torch.Generator().manual_seed(2))
    out = qalign_attention(q_out, q_app, k_app, v_app, contrast_strength=contrast, per_head=per_head)
    permuted = qalign_attention(
        q_out,
        q_app[..., perm, :],
        k_app[..., perm, :],
        v_app[..., perm, :],
        contrast_strength=contrast,
        per_head=per_head,
    )
    torch.testing.assert_close(permuted, out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_head", [False, True])
def test_p2_identity_when_appearance_is_structure(shape, per_head):
    q, k, v, _ = _rand(shape, 3)
    mapping = qq_mapping(q, q, per_head=per_head)
    expected = torch.arange(shape[-2]).expand_as(mapping)
    assert torch.equal(mapping, expected)
    out = qalign_attention(q, q, k, v, contrast_strength=1.0, per_head=per_head)
    torch.testing.assert_close(
        out, torch.nn.functional.scaled_dot_product_attention(q, k, v), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("contrast", CONTRASTS)
def test_p3_unmatched_appearance_tokens_do_not_leak(shape, per_head, contrast):
    q_out, q_app, k_app, v_app = _rand(shape, 4)
    # Fewer output tokens than appearance tokens guarantees unmatched ones exist.
    q_out = q_out[..., : shape[-2] // 2, :]
    mapping = qq_mapping(q_out, q_app, per_head=per_head)
    matched = torch.zeros(*mapping.shape[:-1], shape[-2], dtype=torch.bool)
    matched.scatter_(-1, mapping, True)
    if not per_head:
        matched = matched.unsqueeze(-2).expand(*shape[:-1])
    assert (~matched).any()
    noise = torch.randn_like(k_app) * 100
    k_changed = torch.where(matched.unsqueeze(-1), k_app, noise)
    v_changed = torch.where(matched.unsqueeze(-1), v_app, -noise)
    out = qalign_attention(q_out, q_app, k_app, v_app, contrast_strength=contrast, per_head=per_head)
    changed = qalign_attention(
        q_out, q_app, k_changed, v_changed, contrast_strength=contrast, per_head=per_head
    )
    torch.testing.assert_close(changed, out, rtol=0, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("contrast", CONTRASTS)
@pytest.mark.parametrize("chunk_size", [None, 1, 7, 64, 10_000])
def test_p4_chunked_fused_path_equals_plain_reference(shape, per_head, contrast, chunk_size):
    q_out, q_app, k_app, v_app = _rand(shape, 5)
    assert torch.equal(
        qq_mapping(q_out, q_app, per_head=per_head, chunk_size=chunk_size),
        qq_mapping_reference(q_out, q_app, per_head=per_head),
    )
    fast = qalign_attention(
        q_out, q_app, k_app, v_app, contrast_strength=contrast, per_head=per_head, chunk_size=chunk_size
    )
    plain = qalign_attention_reference(
        q_out, q_app, k_app, v_app, contrast_strength=contrast, per_head=per_head
    )
    assert fast.shape == q_out.shape
    assert _rel_err(fast, plain) <= 1e-5


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("contrast", CONTRASTS)
@pytest.mark.parametrize("chunk_size", [None, 1, 13])
def test_p5_cross_image_attention_equals_its_formula(shape, contrast, chunk_size):
    q_out, _, k_app, v_app = _rand(shape, 6)
    fast = cross_image_attention(q_out, k_app, v_app, contrast_strength=contrast, chunk_size=chunk_size)
    plain = cross_image_attention_reference(q_out, k_app, v_app, contrast_strength=contrast)
    assert _rel_err(fast, plain) <= 1e-5


def test_p5_formula_written_out_for_one_head():
    """The CIA formula by hand on one tiny head: softmax, contrast, clip, weighted sum."""
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    k = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])
    v = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    c = 2.0
    scores = torch.tensor([[2.0, 0.0], [0.0, 0.0]]) / 2**0.5
    weights = torch.clip(c * scores.softmax(-1) - (c - 1) / 2, 0, 1)
    torch.testing.assert_close(cross_image_attention(q, k, v, contrast_strength=c)[0], weights @ v[0])


def test_ties_go_to_the_lowest_index():
    q_out = torch.tensor([[[1.0, 0.0]]])
    q_app = torch.tensor([[[0.0, 1.0], [2.0, 0.0], [1.0, 0.0]]])  # tokens 1 and 2 tie (same direction)
    assert qq_mapping(q_out, q_app).tolist() == [[1]][0]


def test_half_precision_mapping_matches_float32():
    q_out, q_app, _, _ = _rand((4, 256, 32), 7)
    assert torch.equal(
        qq_mapping(q_out.bfloat16().float(), q_app.bfloat16().float()),
        qq_mapping(q_out.bfloat16(), q_app.bfloat16()),
    )


def test_gather_tokens_shared_and_per_head():
    x = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)  # heads 2, tokens 3, dim 2
    shared = gather_tokens(x, torch.tensor([2, 0]))
    assert shared[:, 0].tolist() == x[:, 2].tolist() and shared[:, 1].tolist() == x[:, 0].tolist()
    per_head = gather_tokens(x, torch.tensor([[1, 1], [0, 2]]))
    assert per_head[1, 1].tolist() == x[1, 2].tolist()


def test_contrast_one_is_plain_attention():
    q, k, v, _ = _rand((2, 20, 8), 8)
    torch.testing.assert_close(
        contrast_attention(q, k, v, contrast_strength=1.0),
        contrast_attention(q, k, v, contrast_strength=1.0 + 1e-12, chunk_size=3),
        rtol=1e-5,
        atol=1e-6,
    )


def test_chunk_size_must_be_positive():
    q, k, v, _ = _rand((1, 4, 2), 9)
    with pytest.raises(ValueError, match="chunk_size"):
        qalign_attention(q, q, k, v, chunk_size=0)


def test_leakage_is_lower_when_background_keys_are_unreachable():
    """An all-object structure matches only object tokens: Q-Align leaks nothing, CIA does."""
    g = torch.Generator().manual_seed(10)
    heads, tokens, dim = 2, 16, 8
    q_app = torch.randn(heads, tokens, dim, generator=g)
    k_app = torch.randn(heads, tokens, dim, generator=g)
    app_mask = torch.arange(tokens) < 8
    q_out = q_app[:, torch.arange(tokens) % 8]  # every structure token looks like an object token
    k_app[:, ~app_mask] *= 5  # large-norm background keys: attention sinks for CIA
    struct_mask = torch.ones(tokens, dtype=torch.bool)
    qalign = attention_leakage(q_out, q_app, k_app, struct_mask, app_mask, method="qalign")
    cia = attention_leakage(q_out, q_app, k_app, struct_mask, app_mask, method="cross_image")
    assert qalign == 0.0 < cia


@pytest.mark.parametrize("heads,tokens", list(itertools.product([1, 4], [9, 33])))
def test_output_shape(heads, tokens):
    q, k, v, _ = _rand((heads, tokens, 8), 11)
    assert qalign_attention(q, k, k, v, contrast_strength=1.67).shape == (heads, tokens, 8)
