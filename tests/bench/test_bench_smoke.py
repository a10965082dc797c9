"""Smoke test of the benchmark suite: it imports and the layer benchmark yields well-formed results.

Benchmarks are measured, never asserted on timings: this only checks structure and finiteness.
"""

from __future__ import annotations

import importlib
import json
import math

from bench import BENCHMARKS
from bench.common import format_table


def test_every_benchmark_module_imports() -> None:
    for name in BENCHMARKS:
        assert callable(importlib.import_module(f"bench.{name}").run)


def test_layer_benchmark_tiny_shape() -> None:
    from bench import layer

    result = layer.run(device="cpu", shapes=((256, 16),), repeats=1, warmup=0)
    json.dumps(result)  # the result must be JSON as written by python -m bench
    assert result["name"] == "layer"
    metrics = {c["metric"] for c in result["comparisons"]}
    assert metrics == {
        "time",
        "peak extra memory",
        "one aligned row: time",
        "one aligned row: peak extra memory",
        "time vs 1 fused SDPA",
    }
    for c in result["comparisons"]:
        assert set(c) >= {"case", "metric", "unit", "ours", "reference", "ratio", "target", "met"}
        assert c["ratio"] is not None and math.isfinite(c["ratio"]) and c["ratio"] >= 0
    (detail,) = result["details"]
    assert detail["max_abs_diff_qalign_vs_plain"] < 1e-4
    assert set(detail["memory"]) == {"qalign", "plain", "sdpa", "qalign_row", "plain_row"}
    assert "layer" in format_table({"layer": result})


def test_row_prediction_matches_the_spec_defaults() -> None:
    from bench.rows import predicted_rows
    from qalign_core.params import TransferParams

    params = TransferParams()  # 68 iterations, 57 of them with a mixing layer and swap guidance (11..67)
    assert predicted_rows(params, fused=True) == {"inversion": 268, "denoising": 4 * 57 + 3 * 11}
    assert predicted_rows(params, fused=False) == {"inversion": 268, "denoising": 6 * 57 + 3 * 11}


def test_queue_position_benchmark_runs_and_prints_its_ratios() -> None:
    """The standalone store benchmark (its own redis-server) agrees with the reference and reports."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-m", "bench.queue_position", "--depths", "5,20", "--polls", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = [line for line in run.stdout.splitlines() if line.startswith(("| 5 |", "| 20 |"))]
    assert len(rows) == 2 and all(row.rstrip().endswith("x |") for row in rows)


def test_kmeans_benchmark_tiny_grids() -> None:
    """The clustering benchmark at small grids: well-formed, and both fits find one partition."""
    from bench import kmeans

    result = kmeans.run(device="cpu", grids=((8, 8), (8, 12)), repeats=1)
    json.dumps(result)
    assert result["name"] == "kmeans" and len(result["details"]) == 2
    metrics = {c["metric"] for c in result["comparisons"]}
    assert metrics == {"time", "time, 1 CPU thread", "ARI vs scikit-learn"}
    for c in result["comparisons"]:
        assert c["ratio"] is not None and math.isfinite(c["ratio"]) and c["ratio"] >= 0
    assert all(c["met"] for c in result["comparisons"] if c["metric"] == "ARI vs scikit-learn")
    assert "kmeans" in format_table({"kmeans": result})
