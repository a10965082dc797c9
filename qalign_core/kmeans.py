"""KMeans in torch, on the device of its input: what masked AdaIN's self-segmentation clusters with.

CIA clusters each 4096 x 4096 self-attention map with scikit-learn's KMeans on the CPU, which on a
GPU host means copying the map off the device and costs about as much as the denoising loop. This
is the same algorithm (scikit-learn's defaults: greedy k-means++ seeding, ``n_init`` runs, Lloyd
iterations until the labels stop changing or the squared centre shift falls below ``tol`` times the
data's mean per-feature variance, the run with the lowest inertia wins), written so that

- it runs where the data is (CPU or CUDA) in float32, and nothing of size N x D leaves the device;
- all ``n_init`` runs advance together as one batch: per Lloyd iteration two matrix products of
  ``[N, D] x [D, n_init * k]`` size, distances as ``|x|^2 - 2 x c^T + |c|^2`` (never an
  ``[n_init, N, k, D]`` tensor);
- it is deterministic for a seed: the few random numbers (first centres, seeding draws) come from a
  CPU ``torch.Generator``, so CPU and CUDA draw the same ones.

It finds the same partitions as scikit-learn on clusterable data (adjusted Rand index, tested), not
bit-identical labels: the random streams differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: scikit-learn's defaults, which CIA uses.
DEFAULT_N_INIT = 10
DEFAULT_MAX_ITER = 300
DEFAULT_TOL = 1e-4


@dataclass(frozen=True)
class KMeansResult:
    """The best of the runs: ``labels [N]`` (int64) and ``centers [k, D]`` on the input's device."""

    labels: torch.Tensor
    centers: torch.Tensor
    inertia: float
    n_iter: int


def kmeans(
    x: torch.Tensor,
    n_clusters: int,
    *,
    n_init: int = DEFAULT_N_INIT,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    seed: int = 0,
) -> KMeansResult:
    """Cluster the rows of ``x [N, D]`` into ``n_clusters``; ``n_init`` seeded runs, the best kept."""
    if x.ndim != 2:
        raise ValueError(f"kmeans expects a 2-D tensor [samples, features], got shape {tuple(x.shape)}")
    n = x.shape[0]
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be between 1 and the {n} samples, got {n_clusters}")
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be at least 1, got {n_init} and {max_iter}")
    generator = torch.Generator().manual_seed(seed)
    # Centre the data, as scikit-learn does: the |x|^2 - 2 x c + |c|^2 expansion loses less to
    # cancellation when the norms are small. Labels do not change; centres are shifted back.
    x = x.float()
    mean = x.mean(dim=0)
    data = x - mean
    x_sq = torch.linalg.vector_norm(data, dim=1).square()
    # Centred data: the mean per-feature variance is the mean squared entry.
    threshold = tol * float(x_sq.sum()) / data.numel()

    centers = _kmeans_plusplus(data, x_sq, n_clusters, n_init, generator)
    labels, centers, n_iter = _lloyd(data, x_sq, centers, max_iter, threshold)
    distances = _squared_distances(data, x_sq, centers)
    inertia = distances.gather(2, labels.unsqueeze(-1)).squeeze(-1).clamp_min_(0).sum(dim=1)
    best = int(torch.argmin(inertia))
    return KMeansResult(
        labels=labels[best], centers=centers[best] + mean, inertia=float(inertia[best]), n_iter=n_iter
    )


def _squared_distances(data: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``[B, N, k]`` squared distances of every point to every centre of every run, by one matmul."""
    runs, k, dim = centers.shape
    dots = data @ centers.reshape(runs * k, dim).T  # [N, B*k]
    c_sq = (centers * centers).sum(dim=-1).reshape(1, runs * k)
    d = (x_sq.unsqueeze(1) - 2 * dots + c_sq).clamp_min_(0)
    return d.reshape(-1, runs, k).transpose(0, 1)


def _kmeans_plusplus(
    data: torch.Tensor, x_sq: torch.Tensor, k: int, runs: int, generator: torch.Generator
) -> torch.Tensor:
    """Greedy k-means++ (scikit-learn's ``_kmeans_plusplus``) for ``runs`` seedings at once: each new
    centre is the best, by resulting potential, of ``2 + log k`` candidates drawn with probability
    proportional to the squared distance to the nearest centre so far. Returns ``[runs, k, D]``."""
    n, device = data.shape[0], data.device
    trials = 2 + int(math.log(k))
    first = torch.randint(n, (runs,), generator=generator).to(device)
    chosen = [first]
    closest = _point_distances(data, x_sq, first)  # [runs, N]
    for _ in range(1, k):
        cumulative = closest.double().cumsum(dim=1)  # scikit-learn's stable_cumsum
        draws = torch.rand(runs, trials, generator=generator, dtype=torch.float64).to(device)
        candidates = torch.searchsorted(cumulative, draws * cumulative[:, -1:]).clamp_(max=n - 1)
        to_candidates = _point_distances(data, x_sq, candidates.flatten()).reshape(runs, trials, n)
        to_candidates = torch.minimum(to_candidates, closest.unsqueeze(1))
        best = to_candidates.sum(dim=2).argmin(dim=1)  # [runs]
        rows = torch.arange(runs, device=device)
        closest = to_candidates[rows, best]
        chosen.append(candidates[rows, best])
    return data[torch.stack(chosen, dim=1)]  # [runs, k, D]


def _point_distances(data: torch.Tensor, x_sq: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``[len(index), N]`` squared distances from the points ``index`` to every point."""
    return (x_sq[index].unsqueeze(1) - 2 * (data[index] @ data.T) + x_sq.unsqueeze(0)).clamp_min_(0)


def _lloyd(
    data: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor, max_iter: int, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Lloyd iterations for all runs together; a run stops (its centres frozen) when its labels repeat
    or its total squared centre shift is at most ``threshold``, as scikit-learn's ``_kmeans_single_lloyd``.
    Returns the final labels ``[B, N]`` (assigned to the final centres), centres and iterations run."""
    runs, k, _ = centers.shape
    n, device = data.shape[0], data.device
    active = torch.ones(runs, dtype=torch.bool, device=device)
    previous = torch.full((runs, n), -1, dtype=torch.long, device=device)
    iterations = 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        distances = _squared_distances(data, x_sq, centers)
        labels = distances.argmin(dim=2)  # [B, N]
        updated = _update_centers(data, labels, distances, centers, k)
        unchanged = (labels == previous).all(dim=1)
        shift = ((updated - centers) ** 2).sum(dim=(1, 2))
        centers = torch.where(active.view(runs, 1, 1), updated, centers)
        active &= ~(unchanged | (shift <= threshold))
        previous = labels
        if not bool(active.any()):
            break
    labels = _squared_distances(data, x_sq, centers).argmin(dim=2)
    return labels, centers, iterations


def _update_centers(
    data: torch.Tensor, labels: torch.Tensor, distances: torch.Tensor, centers: torch.Tensor, k: int
) -> torch.Tensor:
    """Means of each run's clusters by one ``[B*k, N] x [N, D]`` matmul. An empty cluster takes the
    point farthest from its own centre (moved out of its old cluster), as scikit-learn relocates them;
    this is rare, so it is done per affected run. Points lying on their centre are never moved."""
    runs, n = labels.shape
    one_hot = torch.zeros(runs, k, n, dtype=data.dtype, device=data.device)
    one_hot.scatter_(1, labels.unsqueeze(1), 1.0)
    sums = (one_hot.reshape(runs * k, n) @ data).reshape(runs, k, -1)
    counts = one_hot.sum(dim=2)  # [B, k]
    empty = counts == 0
    if bool(empty.any()):
        own = distances.gather(2, labels.unsqueeze(-1)).squeeze(-1)  # [B, N]
        for run in torch.nonzero(empty.any(dim=1)).flatten().tolist():
            clusters = torch.nonzero(empty[run]).flatten().tolist()
            top = torch.topk(own[run], len(clusters))
            # Only points off their centre are worth moving: relocating a point that sits on its
            # centre gains nothing, and with duplicate points it would make the runs oscillate.
            far = top.indices[top.values > 0].tolist()
            for cluster, point in zip(clusters, far, strict=False):
                old = int(labels[run, point])
                sums[run, old] -= data[point]
                counts[run, old] -= 1
                sums[run, cluster] = data[point]
                counts[run, cluster] = 1
    safe = counts.clamp_min(1).unsqueeze(-1)
    # A cluster left empty even so (it gave its only point away) keeps its old centre.
    return torch.where(counts.unsqueeze(-1) > 0, sums / safe, centers)
