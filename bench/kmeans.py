"""Benchmark: masked AdaIN's clustering, this project's torch KMeans against scikit-learn's.

Masked AdaIN clusters each image's self-attention map (``[h*w, h*w]``, 4096 x 4096 at SD 1.5's
512 px) into 5 segments with 10 k-means++ inits. CIA does it with scikit-learn on the CPU; the
project does it with ``qalign_core.kmeans`` on the device the maps are on. Both run on the same
clusterable attention-like maps (``attention_like_map``) in the same run: time (median of
interleaved repeats) and the adjusted Rand index (ARI) between the two partitions, which must be at
least 0.99. On CUDA the torch fit runs on the GPU against scikit-learn on the host's CPU, which is
what a GPU host would otherwise do.

Each side is also timed on one CPU thread: on a loaded 2-core machine both OpenMP pools (torch's
and scikit-learn's) lose time to oversubscription, scikit-learn's far more, so the default-threads
ratio alone would flatter this project.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bench.common import comparison, median, time_interleaved
from qalign_core.kmeans import kmeans
from qalign_core.segmentation import KMEANS_SEED, NUM_SEGMENTS

#: Latent grids (h, w): SD 1.5's 512 x 512, and a 4:3 photo at 512 px on its longer side.
GRIDS: tuple[tuple[int, int], ...] = ((64, 64), (48, 64))
QUICK_GRIDS: tuple[tuple[int, int], ...] = ((32, 32), (24, 32))
N_INIT = 10
MIN_ARI = 0.99


def regions(grid: tuple[int, int]) -> torch.Tensor:
    """Labels ``[h, w]``: 0 = a centred ellipse (the object), 1-4 = the four background quadrants."""
    h, w = grid
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    quadrant = 1 + (yy >= h // 2).long() * 2 + (xx >= w // 2).long()
    ellipse = ((yy - h / 2 + 0.5) / (h / 3.2)) ** 2 + ((xx - w / 2 + 0.5) / (w / 3.2)) ** 2 < 1
    return torch.where(ellipse, 0, quadrant)


def attention_like_map(
    grid: tuple[int, int], seed: int = 0, heads: int = 2, dim: int = 16, noise: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """A self-attention map ``[h*w, h*w]`` (mean over heads of ``softmax(q k^T / sqrt(d))``) whose
    tokens fall in 5 well-separated groups, and the group of each token ``[h*w]``.

    Queries and keys are a random code per group plus noise, so rows are noisy, not identical: what
    self-attention over an image with a few distinct regions looks like.
    """
    generator = torch.Generator().manual_seed(seed)
    truth = regions(grid).flatten()
    codes = 1.5 * torch.randn(NUM_SEGMENTS, dim, generator=generator)
    q = codes[truth] + noise * torch.randn(heads, truth.numel(), dim, generator=generator)
    k = codes[truth] + noise * torch.randn(heads, truth.numel(), dim, generator=generator)
    return torch.softmax(q @ k.transpose(-1, -2) / dim**0.5, dim=-1).mean(dim=0), truth


def torch_labels(x: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """The project's fit, as segmentation calls it; ``threads`` caps torch's CPU threads meanwhile."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return kmeans(x, NUM_SEGMENTS, n_init=N_INIT, seed=KMEANS_SEED).labels
    finally:
        torch.set_num_threads(before)


def sklearn_labels(x: np.ndarray, threads: int | None = None) -> np.ndarray:
    """scikit-learn's fit, as CIA calls it; ``threads`` caps its OpenMP and BLAS pools."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads):
        return KMeans(n_clusters=NUM_SEGMENTS, n_init=N_INIT, random_state=KMEANS_SEED).fit(x).labels_


def run(
    *,
    device: str = "cpu",
    quick: bool = False,
    grids: tuple[tuple[int, int], ...] | None = None,
    repeats: int | None = None,
) -> dict[str, Any]:
    """Time both fits on each grid's map and compare their partitions (ARI)."""
    try:
        from sklearn.metrics import adjusted_rand_score
    except ImportError as exc:  # the reference is a test dependency, not a run-time one
        raise RuntimeError(
            "the kmeans benchmark needs scikit-learn, its reference: pip install scikit-learn"
        ) from exc

    grids = grids or (QUICK_GRIDS if quick else GRIDS)
    repeats = repeats if repeats is not None else (1 if quick else 3)
    comparisons, details = [], []
    for grid in grids:
        case = f"{grid[0]}x{grid[1]} grid, [{grid[0] * grid[1]}]^2 map"
        cpu_map, truth = attention_like_map(grid)
        on_device = cpu_map.to(device)
        as_numpy = cpu_map.numpy()
        # The first fits give the partitions and serve as the warm-up.
        ours, reference = torch_labels(on_device).cpu().numpy(), sklearn_labels(as_numpy)
        ari = float(adjusted_rand_score(reference, ours))
        variants = {
            "torch": lambda m=on_device: torch_labels(m),
            "sklearn": lambda m=as_numpy: sklearn_labels(m),
            "sklearn_1_thread": lambda m=as_numpy: sklearn_labels(m, threads=1),
        }
        if device == "cpu":
            variants["torch_1_thread"] = lambda m=on_device: torch_labels(m, threads=1)
        times = time_interleaved(variants, device, repeats, warmup=0)
        t = {name: median(values) for name, values in times.items()}
        comparisons.append(
            comparison(
                case,
                "time",
                "s",
                t["torch"],
                t["sklearn"],
                ours_label=f"torch {device}",
                reference_label="sklearn cpu",
            )
        )
        ours_1 = "torch_1_thread" if device == "cpu" else "torch"
        comparisons.append(
            comparison(
                case,
                "time, 1 CPU thread" if device == "cpu" else "time vs sklearn on 1 CPU thread",
                "s",
                t[ours_1],
                t["sklearn_1_thread"],
                ours_label=f"torch {device}",
                reference_label="sklearn cpu",
            )
        )
        agreement = comparison(
            case,
            "ARI vs scikit-learn",
            "",
            ari,
            1.0,
            ours_label="torch",
            reference_label="identical",
            target_text=f">= {MIN_ARI}",
        )
        agreement["met"] = ari >= MIN_ARI
        comparisons.append(agreement)
        details.append(
            {
                "grid": list(grid),
                "device": device,
                "repeats": repeats,
                "times_s": times,
                "median_s": t,
                "ari_torch_vs_sklearn": ari,
                "ari_torch_vs_truth": float(adjusted_rand_score(truth.numpy(), ours)),
                "ari_sklearn_vs_truth": float(adjusted_rand_score(truth.numpy(), reference)),
            }
        )
    return {"name": "kmeans", "comparisons": comparisons, "details": details}
