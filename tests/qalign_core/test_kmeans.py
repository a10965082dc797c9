"""The torch KMeans that masked AdaIN's segmentation uses, against scikit-learn's on the same data.

The maps are clusterable attention-like maps (``bench.kmeans.attention_like_map``: softmax of
q k^T over five well-separated token groups), at SD 1.5's 64 x 64 grid (a 4096 x 4096 map) and a
non-square one. scikit-learn runs on one thread here: on a loaded 2-core machine its OpenMP pool
beside torch's costs it 10x (see docs/performance.md), which would only slow the test.
"""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from bench.kmeans import attention_like_map, sklearn_labels
from qalign_core.kmeans import kmeans


@pytest.mark.parametrize("grid", [(64, 64), (48, 32)], ids=["64x64", "48x32"])
def test_same_partition_as_scikit_learn_on_attention_like_maps(grid):
    attention, truth = attention_like_map(grid)
    ours = kmeans(attention, 5, n_init=10, seed=1).labels
    assert ours.shape == (grid[0] * grid[1],) and ours.dtype == torch.long
    reference = sklearn_labels(attention.numpy(), threads=1)
    assert adjusted_rand_score(reference, ours.numpy()) >= 0.99
    assert adjusted_rand_score(truth.numpy(), ours.numpy()) >= 0.99


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_the_groups_of_smaller_maps_for_any_seed(seed):
    attention, truth = attention_like_map((16, 24), seed=seed)
    result = kmeans(attention, 5, seed=seed)
    assert adjusted_rand_score(truth.numpy(), result.labels.numpy()) >= 0.99


def test_same_seed_same_labels_and_centres():
    attention, _ = attention_like_map((32, 32), noise=1.0)
    first, second = kmeans(attention, 5, seed=7), kmeans(attention, 5, seed=7)
    assert torch.equal(first.labels, second.labels)
    assert torch.equal(first.centers, second.centers) and first.inertia == second.inertia


def test_inertia_and_centres_agree_with_scikit_learn_on_blobs():
    """Gaussian blobs: the best run's inertia and centres are scikit-learn's, to float32 rounding."""
    from sklearn.cluster import KMeans

    generator = torch.Generator().manual_seed(3)
    means = 6 * torch.randn(4, 10, generator=generator)
    points = (means.repeat_interleave(50, 0) + torch.randn(200, 10, generator=generator)).float()
    ours = kmeans(points, 4, seed=0)
    reference = KMeans(n_clusters=4, n_init=10, random_state=0).fit(points.numpy())
    assert ours.inertia == pytest.approx(reference.inertia_, rel=1e-4)
    assert adjusted_rand_score(reference.labels_, ours.labels.numpy()) == 1.0
    order = [int(ours.labels[int((reference.labels_ == c).nonzero()[0][0])]) for c in range(4)]
    torch.testing.assert_close(
        ours.centers[order], torch.from_numpy(reference.cluster_centers_), atol=1e-4, rtol=0
    )


def test_fewer_distinct_points_than_clusters_relocates_empty_clusters():
    """Three distinct points, five clusters: seeding repeats a centre and clusters go empty; they
    are relocated as scikit-learn does, and the fit ends with zero inertia."""
    points = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, 5.0]]).repeat(10, 1)
    result = kmeans(points, 5, seed=0)
    assert result.inertia == pytest.approx(0.0, abs=1e-4)
    assert set(result.labels.tolist()) <= set(range(5))
    assert adjusted_rand_score(torch.arange(3).repeat(10).numpy(), result.labels.numpy()) == 1.0


def test_one_iteration_cap_is_respected():
    attention, _ = attention_like_map((16, 16), noise=2.0)
    assert kmeans(attention, 5, max_iter=1, seed=0).n_iter == 1


def test_bad_input_is_refused_with_the_allowed_range():
    with pytest.raises(ValueError, match="2-D"):
        kmeans(torch.zeros(10), 2)
    with pytest.raises(ValueError, match="between 1 and the 4 samples"):
        kmeans(torch.zeros(4, 3), 5)
    with pytest.raises(ValueError, match="at least 1"):
        kmeans(torch.zeros(4, 3), 2, n_init=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fit_stays_on_the_device_and_finds_the_cpu_partition():
    attention, _ = attention_like_map((64, 64))
    on_gpu = kmeans(attention.cuda(), 5, seed=1)
    assert on_gpu.labels.is_cuda and on_gpu.centers.is_cuda
    on_cpu = kmeans(attention, 5, seed=1)
    assert adjusted_rand_score(on_cpu.labels.numpy(), on_gpu.labels.cpu().numpy()) >= 0.99
