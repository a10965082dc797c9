"""Self-segmentation for masked AdaIN, on captured queries and keys with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qalign_core.segmentation import (
    AttentionCapture,
    compute_object_masks,
    noun_token_positions,
    object_segments,
)

SIDE = 16  # latent grid; cross-attention is captured at 8 x 8
WIDE = (16, 24)  # a non-square latent grid (h, w); cross-attention at 8 x 12


def _regions(grid: tuple[int, int], shift: int = 0) -> torch.Tensor:
    """Region labels ``[h, w]``: 0 = a centred ellipse (the object, moved right by ``shift`` on the
    half grid), 1-4 = the four background quadrants, drawn on the half grid and repeated 2x, so
    both captured grids agree on every region."""
    half_h, half_w = grid[0] // 2, grid[1] // 2
    yy, xx = torch.meshgrid(torch.arange(half_h), torch.arange(half_w), indexing="ij")
    quadrant = 1 + (yy >= half_h // 2).long() * 2 + (xx >= half_w // 2).long()
    dy, dx = (yy - half_h / 2 + 0.5) / (half_h / 3.2), (xx - half_w / 2 + 0.5 - shift) / (half_w / 3.2)
    coarse = torch.where(dy**2 + dx**2 < 1, 0, quadrant)
    return coarse.repeat_interleave(2, 0).repeat_interleave(2, 1)


def _row_qk(grid: tuple[int, int], noun_position: int, shift: int = 0) -> dict[str, torch.Tensor]:
    """One image's ``[heads=1, tokens, d]`` queries and keys: self-attention stays inside each
    region, and cross-attention sends the object's tokens to the noun's token."""
    embed = torch.eye(8)[:5] * 3.0
    regions = _regions(grid, shift)
    fine, coarse = embed[regions.flatten()], embed[regions[::2, ::2].flatten()]
    text = torch.zeros(77, 8)
    text[noun_position] = embed[0] * 10
    return {"self_q": fine[None], "self_k": fine[None], "cross_q": coarse[None], "cross_k": text[None]}


def _capture(
    noun_position: int, grid: tuple[int, int] = (SIDE, SIDE), appearance_shifts: tuple[int, ...] = (0,)
) -> AttentionCapture:
    """A capture of rows ``[APP_1..APP_m, STRUCT]`` (STRUCT last, its object unshifted)."""
    rows = [_row_qk(grid, noun_position, s) for s in (*appearance_shifts, 0)]
    stacked = {name: torch.stack([row[name] for row in rows]) for name in rows[0]}
    capture = AttentionCapture(grid=grid, active=True)
    capture.record_self("fine", stacked["self_q"], stacked["self_k"])
    capture.record_cross("coarse", stacked["cross_q"], stacked["cross_k"])
    return capture


def test_the_object_segment_is_found_in_both_images():
    (masks,) = compute_object_masks(_capture(5), [5])
    expected = (_regions((SIDE, SIDE)) == 0).numpy()
    assert masks.found and not masks.reason
    assert np.array_equal(masks.structure.numpy(), expected)
    assert np.array_equal(masks.appearance.numpy(), expected)


def test_non_square_grid_gives_masks_of_its_shape():
    capture = _capture(5, WIDE, appearance_shifts=(2,))
    assert capture.latent_tokens == 16 * 24 and capture.cross_grid == (8, 12)
    (masks,) = compute_object_masks(capture, [5])
    assert masks.found
    assert masks.structure.shape == masks.appearance.shape == WIDE
    assert masks.structure.dtype == masks.appearance.dtype == torch.bool
    assert torch.equal(masks.structure, _regions(WIDE) == 0)
    assert torch.equal(masks.appearance, _regions(WIDE, shift=2) == 0)


@pytest.mark.parametrize("grid", [(SIDE, SIDE), WIDE], ids=["square", "non-square"])
def test_each_pair_gets_the_masks_of_its_own_single_pair_run(grid):
    """Rows [APP_1, APP_2, APP_3, STRUCT]: pair k's masks are those of the capture [APP_k, STRUCT],
    and the structure's mask (clustered once) is the same for every pair."""
    shifts = (-2, 0, 2)
    together = compute_object_masks(_capture(5, grid, shifts), [5])
    assert len(together) == 3
    for k, shift in enumerate(shifts):
        (alone,) = compute_object_masks(_capture(5, grid, (shift,)), [5])
        assert together[k].found and alone.found
        assert torch.equal(together[k].appearance, alone.appearance)
        assert torch.equal(together[k].structure, alone.structure)
        assert torch.equal(together[k].appearance, _regions(grid, shift) == 0)
    assert all(m.structure is together[0].structure for m in together)


def test_no_noun_or_no_capture_gives_no_masks_and_says_why():
    answers = compute_object_masks(_capture(5, appearance_shifts=(0, 1)), [])
    assert len(answers) == 2 and all("not in the prompt" in m.reason for m in answers)
    empty = AttentionCapture(grid=(SIDE, SIDE))
    (answer,) = compute_object_masks(empty, [5])
    assert "no attention was captured" in answer.reason and not answer.found
    answers = compute_object_masks(empty, [5], appearances=3)
    assert len(answers) == 3 and not any(m.found for m in answers)


def test_a_capture_with_other_rows_than_expected_is_a_caller_error():
    with pytest.raises(ValueError, match="holds 2 appearance rows, 3 were expected"):
        compute_object_masks(_capture(5, appearance_shifts=(0, 1)), [5], appearances=3)


def test_attention_to_another_token_finds_no_object():
    (masks,) = compute_object_masks(_capture(9), [5])  # the noun's token sees uniform attention
    assert not masks.found and masks.reason == "segmentation found no object"


def test_capture_keeps_only_the_last_call_at_its_grid_and_only_while_active():
    capture = AttentionCapture(grid=(16, 16))
    assert capture.latent_tokens == 256
    q = torch.randn(2, 1, 256, 4)
    capture.record_self("a", q, q)
    assert capture.self_qk is None  # inactive
    capture.active = True
    capture.record_self("a", q, q)
    capture.record_self("b", q * 2, q)
    capture.record_self("coarse", torch.randn(2, 1, 64, 4), q)  # not the finest grid
    capture.record_cross("c", torch.randn(2, 1, 64, 4), torch.randn(2, 1, 77, 4))
    capture.record_cross("fine", torch.randn(2, 1, 256, 4), torch.randn(2, 1, 77, 4))  # not half the grid
    assert capture.layers == ["a", "b", "c"] and torch.equal(capture.self_qk[0], q * 2)
    capture.clear()
    assert capture.self_qk is None and capture.cross_qk is None and not capture.active
    assert capture.grid == (16, 16)


def test_non_square_capture_keeps_its_two_grids():
    capture = AttentionCapture(grid=(48, 64), active=True)
    assert capture.latent_tokens == 3072 and capture.cross_grid == (24, 32)
    assert capture.wants_cross(24 * 32) and not capture.wants_cross(3072 // 4 + 1)
    assert not capture.wants_cross(12 * 16)  # the grid below
    assert not AttentionCapture().wants_cross(0)  # no grid set yet


def test_object_rule_is_cias_threshold():
    """A segment is the object when its mean (normalised) noun attention beats 1.4 x the mean score
    of the other segments, the best one left out of that mean."""
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 4, 4]], dtype=np.int32)
    noun = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)  # repeated 2x: segment 0 only
    assert object_segments(labels, noun) == [0]
    noun = np.array([[1.0, 0.5], [0.0, 0.0]], dtype=np.float32)
    assert object_segments(labels, noun) == [0, 1]  # 0.5 > 1.4 * (0.5 + 0 + 0 + 0) / 4
    assert object_segments(labels, np.ones((2, 2), dtype=np.float32)) == []  # nothing stands out


def test_object_rule_upsamples_a_non_square_noun_map_along_both_axes():
    labels = np.array([[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [3, 3, 3, 4, 4, 4], [3, 3, 3, 4, 4, 4]])
    noun = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)  # [2, 3] -> [4, 6]
    assert object_segments(labels, noun) == [1]


def test_noun_positions_follow_the_tokenizer(tiny_model_dir):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir, subfolder="tokenizer")
    prompt_ids = tokenizer("A photo of a cup").input_ids
    positions = noun_token_positions(tokenizer, "A photo of a cup", "cup")
    assert positions and positions[-1] == len(prompt_ids) - 2  # just before the end token
    assert noun_token_positions(tokenizer, "A photo of a cup", "giraffe") == []
