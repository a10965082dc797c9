"""Self-segmentation for masked AdaIN, as CIA does it (utils/segmentation.py, from Prompt Mixing).

At one denoising iteration the pipeline records the queries and keys of rows
``[APP_1..APP_m, STRUCT]`` (STRUCT last) in two decoder layers: the last self-attention at the
latent's finest token grid ``h x w`` and the last cross-attention at the next grid ``h/2 x w/2``.
From them, per image:

1. the self-attention map (mean over heads, ``[h*w, h*w]``), one row per token, is clustered by
   KMeans into 5 segments, in torch on the device the maps were captured on
   (``qalign_core.kmeans``: k-means++, 10 runs, Lloyd, scikit-learn's defaults, as CIA uses);
2. the cross-attention map of the object noun's token(s) (mean over heads), upsampled 2x along both
   axes by repetition, normalised as CIA does, scores each segment by its mean;
3. segments scoring above 1.4 x the mean of the other scores (the best one left out) are the object.

The structure is clustered once and its mask shared by every pair. Every fit has its own generator
seeded alike, so pair k's masks are those of a single-pair run with APP_k, whatever m is.

Only queries and keys are kept (a few MB), and only for that iteration: each N x N map is built
(one head at a time) and clustered on the device, then dropped before the next. Only the labels
``[h, w]`` and the noun map ``[h/2, w/2]`` go to the CPU, where the segment scores are summed in
float64 as CIA's numpy code does. CIA's maps are square (64 x 64); other grids are this project's
generalisation of the same rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from qalign_core.kmeans import kmeans

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

NUM_SEGMENTS = 5
#: A segment is the object when its score exceeds this multiple of the other segments' mean score.
OBJECT_SCORE_RATIO = 1.4
#: Every fit is seeded with this (CIA seeds its fits with RandomState(1)).
KMEANS_SEED = 1


@dataclass
class AttentionCapture:
    """Queries and keys of rows ``[APP_1..APP_m, STRUCT]`` (``[m+1, heads, tokens, d]``); the last
    layer call at each grid wins.

    ``grid`` is the latent's ``(h, w)``: self-attention is kept at ``h * w`` tokens, cross-attention
    at the next grid's ``(h // 2) * (w // 2)``.
    """

    grid: tuple[int, int] = (0, 0)
    active: bool = False
    self_qk: tuple[torch.Tensor, torch.Tensor] | None = None
    cross_qk: tuple[torch.Tensor, torch.Tensor] | None = None
    layers: list[str] = field(default_factory=list)

    @property
    def latent_tokens(self) -> int:
        """Tokens of the finest grid, ``h * w``."""
        return self.grid[0] * self.grid[1]

    @property
    def cross_grid(self) -> tuple[int, int]:
        """The grid cross-attention is kept at: the UNet's next level, half of each side."""
        return self.grid[0] // 2, self.grid[1] // 2

    def record_self(self, layer: str, q: torch.Tensor, k: torch.Tensor) -> None:
        if self.active and q.shape[-2] == self.latent_tokens:
            self.self_qk = (q.detach().clone(), k.detach().clone())
            self.layers.append(layer)

    def wants_cross(self, query_tokens: int) -> bool:
        """Whether a cross-attention call with this many queries is one to keep (the next grid)."""
        h, w = self.cross_grid
        return self.active and h * w > 0 and query_tokens == h * w

    def record_cross(self, layer: str, q: torch.Tensor, k: torch.Tensor) -> None:
        if self.wants_cross(q.shape[-2]):
            self.cross_qk = (q.detach().clone(), k.detach().clone())
            self.layers.append(layer)

    def clear(self) -> None:
        """Drop what was recorded and stop recording; the grid stays."""
        self.active, self.self_qk, self.cross_qk = False, None, None
        self.layers.clear()


@dataclass(frozen=True)
class ObjectMasks:
    """Boolean object masks on the latent grid ``[h, w]``, or why there are none."""

    structure: torch.Tensor | None
    appearance: torch.Tensor | None
    reason: str = ""

    @property
    def found(self) -> bool:
        """Both masks exist and hold at least two positions (masked AdaIN needs a variance)."""
        return (
            self.structure is not None
            and self.appearance is not None
            and int(self.structure.sum()) >= 2
            and int(self.appearance.sum()) >= 2
        )


def mean_attention_map(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``mean_h softmax(q_h k_h^T / sqrt(d))`` for ``q [H, N, d]``, ``k [H, M, d]``, one head at a time."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    total = torch.zeros(q.shape[-2], k.shape[-2], dtype=torch.float32, device=q.device)
    for head in range(q.shape[0]):
        total += ((q[head].float() @ k[head].float().T) * scale).softmax(dim=-1)
    return total / q.shape[0]


def segment_labels(q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
    """KMeans labels ``[h, w]`` of one image's self-attention rows, clustered on q's device.

    Each call seeds its own generator, so an image's labels never depend on the other images.
    """
    self_map = mean_attention_map(q, k)
    labels = kmeans(self_map, NUM_SEGMENTS, seed=KMEANS_SEED).labels
    del self_map
    return labels.cpu().numpy().reshape(grid)


def object_segments(labels: np.ndarray, noun_map: np.ndarray) -> list[int]:
    """Segments whose mean noun attention beats OBJECT_SCORE_RATIO x the others' mean (CIA's rule).

    ``noun_map`` is at half the resolution of ``labels`` along both axes; it is repeated 2x along
    both and normalised as ``(m - |min m|) / max m``, exactly as CIA does.
    """
    upsampled = noun_map.repeat(2, axis=0).repeat(2, axis=1)
    normalised = (upsampled - np.abs(upsampled.min())) / upsampled.max()
    scores = []
    for segment in range(NUM_SEGMENTS):
        inside = (labels == segment).astype(labels.dtype)  # integer x float32: float64 sums, as CIA's
        scores.append(float((inside * normalised).sum() / max(int(inside.sum()), 1)))
    others = list(scores)
    others.remove(max(others))
    mean_other = sum(others) / len(others)
    return [s for s in range(NUM_SEGMENTS) if scores[s] > OBJECT_SCORE_RATIO * mean_other]


def noun_token_positions(tokenizer: PreTrainedTokenizerBase, prompt: str, noun: str) -> list[int]:
    """Positions of ``noun``'s tokens in the tokenized prompt (last occurrence), [] if absent."""
    prompt_ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    noun_ids = tokenizer(noun, add_special_tokens=False).input_ids
    if not noun_ids:
        return []
    for start in range(len(prompt_ids) - len(noun_ids), -1, -1):
        if prompt_ids[start : start + len(noun_ids)] == noun_ids:
            return list(range(start, start + len(noun_ids)))
    return []


def compute_object_masks(
    capture: AttentionCapture, noun_positions: list[int], appearances: int | None = None
) -> list[ObjectMasks]:
    """Masks (structure, appearance) on the latent grid, one per appearance row, in order.

    ``appearances`` is how many to answer when nothing was captured (default 1); when the capture
    holds rows, their count decides and a different ``appearances`` is a caller error.
    """
    self_qk, cross_qk = capture.self_qk, capture.cross_qk
    count = self_qk[0].shape[0] - 1 if self_qk is not None else (appearances or 1)
    if appearances is not None and count != appearances:
        raise ValueError(f"the capture holds {count} appearance rows, {appearances} were expected")
    if not noun_positions:
        return [ObjectMasks(None, None, "the object noun (the domain) is not in the prompt")] * count
    if self_qk is None or cross_qk is None:
        return [ObjectMasks(None, None, "no attention was captured at the segmentation step")] * count
    (self_q, self_k), (cross_q, cross_k) = self_qk, cross_qk
    if cross_q.shape[0] != count + 1:
        raise ValueError(f"self- and cross-attention captures hold {count + 1} and {cross_q.shape[0]} rows")
    grid, (half_h, half_w) = capture.grid, capture.cross_grid

    def mask(row: int, labels: np.ndarray) -> torch.Tensor:
        cross = mean_attention_map(cross_q[row], cross_k[row]).reshape(half_h, half_w, -1)
        noun_map = cross[..., noun_positions].mean(dim=-1).cpu().numpy()
        return torch.from_numpy(np.isin(labels, object_segments(labels, noun_map)))

    structure_row = count
    structure = mask(structure_row, segment_labels(self_q[structure_row], self_k[structure_row], grid))
    results = []
    for row in range(count):
        appearance = mask(row, segment_labels(self_q[row], self_k[row], grid))
        found = ObjectMasks(structure, appearance)
        results.append(
            found if found.found else ObjectMasks(structure, appearance, "segmentation found no object")
        )
    return results
