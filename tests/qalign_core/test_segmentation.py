"""Self-segmentation for masked AdaIN, on captured queries and keys with a known answer."""

from __future__ import annotations

import numpy as np
import torch

from qalign_core.segmentation import (
    AttentionCapture,
    compute_object_masks,
    noun_token_positions,
    object_segments,
)

SIDE = 16  # latent grid; cross-attention is captured at 8 x 8


def _regions(side: int) -> torch.Tensor:
    """Region labels: 0 = a centred disc (the object), 1-4 = the four background quadrants, drawn on
    the half grid and repeated 2x, so both captured grids agree on every region."""
    half = side // 2
    yy, xx = torch.meshgrid(torch.arange(half), torch.arange(half), indexing="ij")
    quadrant = 1 + (yy >= half // 2).long() * 2 + (xx >= half // 2).long()
    disc = (yy - half / 2 + 0.5) ** 2 + (xx - half / 2 + 0.5) ** 2 < (half / 3.2) ** 2
    coarse = torch.where(disc, 0, quadrant)
    return coarse.repeat_interleave(2, 0).repeat_interleave(2, 1)


def _capture(noun_position: int) -> AttentionCapture:
    """Rows (APP, STRUCT) whose self-attention stays inside each region and whose cross-attention
    sends the object's tokens to the noun's token."""
    embed = torch.eye(8)[:5] * 3.0
    fine = embed[_regions(SIDE).flatten()]  # [256, 8]
    coarse = embed[_regions(SIDE)[::2, ::2].flatten()]  # [64, 8]
    text = torch.zeros(77, 8)
    text[noun_position] = embed[0] * 10
    capture = AttentionCapture(latent_tokens=SIDE * SIDE, active=True)
    rows = lambda x: x.expand(2, 1, *x.shape).clone()  # noqa: E731 - [rows, heads, tokens, d]
    capture.record_self("fine", rows(fine), rows(fine))
    capture.record_cross("coarse", rows(coarse), rows(text))
    return capture


def test_the_object_segment_is_found_in_both_images():
    masks = compute_object_masks(_capture(5), [5])
    expected = (_regions(SIDE) == 0).numpy()
    assert masks.found and not masks.reason
    assert np.array_equal(masks.structure.numpy(), expected)
    assert np.array_equal(masks.appearance.numpy(), expected)


def test_no_noun_or_no_capture_gives_no_masks_and_says_why():
    assert "not in the prompt" in compute_object_masks(_capture(5), []).reason
    empty = AttentionCapture(latent_tokens=SIDE * SIDE)
    assert "no attention was captured" in compute_object_masks(empty, [5]).reason
    assert not compute_object_masks(empty, [5]).found


def test_attention_to_another_token_finds_no_object():
    masks = compute_object_masks(_capture(9), [5])  # the noun's token sees uniform attention
    assert not masks.found and masks.reason == "segmentation found no object"


def test_capture_keeps_only_the_last_call_at_its_grid_and_only_while_active():
    capture = AttentionCapture(latent_tokens=256)
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


def test_object_rule_is_cias_threshold():
    """A segment is the object when its mean (normalised) noun attention beats 1.4 x the mean score
    of the other segments, the best one left out of that mean."""
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 4, 4]], dtype=np.int32)
    noun = np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32)  # repeated 2x: segment 0 only
    assert object_segments(labels, noun) == [0]
    noun = np.array([[1.0, 0.5], [0.0, 0.0]], dtype=np.float32)
    assert object_segments(labels, noun) == [0, 1]  # 0.5 > 1.4 * (0.5 + 0 + 0 + 0) / 4
    assert object_segments(labels, np.ones((2, 2), dtype=np.float32)) == []  # nothing stands out


def test_noun_positions_follow_the_tokenizer(tiny_model_dir):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir, subfolder="tokenizer")
    prompt_ids = tokenizer("A photo of a cup").input_ids
    positions = noun_token_positions(tokenizer, "A photo of a cup", "cup")
    assert positions and positions[-1] == len(prompt_ids) - 2  # just before the end token
    assert noun_token_positions(tokenizer, "A photo of a cup", "giraffe") == []
