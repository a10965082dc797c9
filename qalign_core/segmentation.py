"""Self-segmentation for masked AdaIN, as CIA does it (utils/segmentation.py, from Prompt Mixing).

At one denoising iteration the pipeline records the queries and keys of rows APP and STRUCT in two
decoder layers: the last self-attention at the finest token grid and the last cross-attention at
half that grid. From them, per image:

1. the self-attention map (mean over heads), one row per token, is clustered by KMeans into 5
   segments (seeded like CIA: one RandomState(1) for the appearance fit, then the structure fit);
2. the cross-attention map of the object noun's token(s) (mean over heads), upsampled 2x by
   repetition, normalised as CIA does, scores each segment by its mean;
3. segments scoring above 1.4 x the mean of the other scores (the best one left out) are the object.

Only queries and keys are kept (a few MB), and only for that iteration: the N x N maps are built
one head at a time when the masks are computed, then dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

NUM_SEGMENTS = 5
#: A segment is the object when its score exceeds this multiple of the other segments' mean score.
OBJECT_SCORE_RATIO = 1.4


@dataclass
class AttentionCapture:
    """Queries and keys of rows APP and STRUCT (``[2, heads, tokens, d]``), last layer call wins."""

    #: The latent's (h, w): self-attention is kept at h*w tokens, cross-attention at a quarter of it.
    grid: tuple[int, int] = (0, 0)
    active: bool = False
    self_qk: tuple[torch.Tensor, torch.Tensor] | None = None
    cross_qk: tuple[torch.Tensor, torch.Tensor] | None = None
    layers: list[str] = field(default_factory=list)

    @property
    def latent_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def record_self(self, layer: str, q: torch.Tensor, k: torch.Tensor) -> None:
        if self.active and q.shape[-2] == self.latent_tokens:
            self.self_qk = (q.detach().clone(), k.detach().clone())
            self.layers.append(layer)

    def wants_cross(self, query_tokens: int) -> bool:
        """Whether a cross-attention call with this many queries is one to keep (half the grid)."""
        return self.active and query_tokens * 4 == self.latent_tokens

    def record_cross(self, layer: str, q: torch.Tensor, k: torch.Tensor) -> None:
        if self.wants_cross(q.shape[-2]):
            self.cross_qk = (q.detach().clone(), k.detach().clone())
            self.layers.append(layer)

    def clear(self) -> None:
        self.active, self.self_qk, self.cross_qk = False, None, None
        self.layers.clear()


@dataclass(frozen=True)
class ObjectMasks:
    """Boolean object masks on the latent grid ``[side, side]``, or why there are none."""

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


def cluster_tokens(self_map: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """KMeans labels ``[h, w]`` of one image's self-attention rows (its own seeded fit)."""
    from sklearn.cluster import KMeans

    fit = KMeans(n_clusters=NUM_SEGMENTS, n_init=10, random_state=np.random.RandomState(1)).fit(self_map)
    return fit.labels_.reshape(grid)


def object_segments(labels: np.ndarray, noun_map: np.ndarray) -> list[int]:
    """Segments whose mean noun attention beats OBJECT_SCORE_RATIO x the others' mean (CIA's rule).

    ``noun_map`` is at half the resolution of ``labels``; it is repeated 2x along both axes and
    normalised as ``(m - |min m|) / max m``, exactly as CIA does.
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


def noun_token_positions(tokenizer, prompt: str, noun: str) -> list[int]:
    """Positions of ``noun``'s tokens in the tokenized prompt (last occurrence), [] if absent."""
    prompt_ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    noun_ids = tokenizer(noun, add_special_tokens=False).input_ids
    if not noun_ids:
        return []
    for start in range(len(prompt_ids) - len(noun_ids), -1, -1):
        if prompt_ids[start : start + len(noun_ids)] == noun_ids:
            return list(range(start, start + len(noun_ids)))
    return []


def compute_object_masks(capture: AttentionCapture, noun_positions: list[int]) -> list[ObjectMasks]:
    """Masks (structure, appearance_k) on the latent grid for each captured appearance row, in order.

    The capture's rows are ``[APP_1..APP_m, STRUCT]``; the structure is segmented once and its mask
    is shared by every pair.
    """
    pairs = 1 if capture.self_qk is None else capture.self_qk[0].shape[0] - 1
    if not noun_positions:
        return [ObjectMasks(None, None, "the object noun (the domain) is not in the prompt")] * pairs
    if capture.self_qk is None or capture.cross_qk is None:
        return [ObjectMasks(None, None, "no attention was captured at the segmentation step")] * pairs
    h, w = capture.grid
    (self_q, self_k), (cross_q, cross_k) = capture.self_qk, capture.cross_qk
    masks = []
    for row in range(pairs + 1):
        labels = cluster_tokens(mean_attention_map(self_q[row], self_k[row]).cpu().numpy(), (h, w))
        cross = mean_attention_map(cross_q[row], cross_k[row]).reshape(h // 2, w // 2, -1)
        noun_map = cross[..., noun_positions].mean(dim=-1).cpu().numpy()
        objects = object_segments(labels, noun_map)
        masks.append(torch.from_numpy(np.isin(labels, objects)))
    *appearances, structure = masks
    found = []
    for appearance in appearances:
        pair = ObjectMasks(structure, appearance)
        reason = "" if pair.found else "segmentation found no object"
        found.append(ObjectMasks(structure, appearance, reason))
    return found
