"""Benchmark: one job with N appearances against N single-appearance jobs (tiny model, same run).

The N-appearance job inverts the structure once and shares its row: 3N+1 UNet rows per aligned step
instead of 4N, N+1 inversions instead of 2N, one structure segmentation. Two references, timed
interleaved with it: N independent single jobs, and N single jobs sharing an inversion cache (as the
service's would, so the structure is inverted once there too). Rows are counted, not computed.

    python -m bench.appearances [--appearances 4] [--steps 100] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.common import comparison, median, test_images, time_interleaved, tiny_model_dir
from qalign_core.params import TransferParams


def looks(count: int) -> list[Any]:
    """``count`` different deterministic appearance images."""
    import numpy as np
    from PIL import Image

    _, base = test_images()
    return [Image.fromarray(np.roll(np.asarray(base), 37 * k, axis=(0, 1))) for k in range(count)]


def run(
    *,
    device: str = "cpu",
    quick: bool = False,
    appearances: int = 4,
    steps: int | None = None,
    repeats: int = 3,
) -> dict[str, Any]:
    from qalign_core.inversion import MemoryInversionCache
    from qalign_core.pipeline import QAlignPipeline

    params = TransferParams(steps=steps or (16 if quick else 100))
    repeats = 1 if quick else repeats
    pipe = QAlignPipeline.from_pretrained(tiny_model_dir(), device=device)
    structure, _ = test_images()
    appearance_images = looks(appearances)
    counted: dict[str, Any] = {}

    def one_job() -> None:
        result = pipe.transfer(structure, appearance_images, params)
        counted["job"] = (result.rows_per_step, dict(result.unet_rows), result.shape)

    def single_jobs() -> None:
        results = [pipe.transfer(structure, look, params) for look in appearance_images]
        counted["singles"] = (results[0].rows_per_step, sum(sum(r.unet_rows.values()) for r in results))

    def single_jobs_cached() -> None:
        cache = MemoryInversionCache()
        for look in appearance_images:
            pipe.transfer(structure, look, params, inversion_cache=cache)

    times = time_interleaved(
        {"job": one_job, "singles": single_jobs, "singles_cached": single_jobs_cached},
        device,
        repeats=repeats,
        warmup=0,
    )
    job_rows, job_unet_rows, shape = counted["job"]
    single_rows, singles_total_rows = counted["singles"]
    case = f"tiny model, {params.steps} steps, N={appearances}, {shape.width}x{shape.height}"
    comparisons = [
        comparison(
            case, "rows per aligned step", "rows", float(job_rows), float(appearances * single_rows),
            ours_label="1 job", reference_label=f"{appearances} jobs",
        ),
        comparison(
            case, "UNet rows per transfer", "rows", float(sum(job_unet_rows.values())),
            float(singles_total_rows), ours_label="1 job", reference_label=f"{appearances} jobs",
        ),
        comparison(
            case, "wall time", "s", median(times["job"]), median(times["singles"]),
            ours_label="1 job", reference_label=f"{appearances} jobs", target_max=0.8,
        ),
        comparison(
            case, "wall time vs cached singles", "s", median(times["job"]), median(times["singles_cached"]),
            ours_label="1 job", reference_label=f"{appearances} jobs, shared cache",
        ),
    ]  # fmt: skip
    return {
        "name": "appearances",
        "comparisons": comparisons,
        "details": {
            "times_s": times,
            "job_unet_rows": job_unet_rows,
            "params": params.model_dump(mode="json"),
        },
    }


def main() -> None:
    from bench.common import format_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appearances", type=int, default=4)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    result = run(device=args.device, appearances=args.appearances, steps=args.steps, repeats=args.repeats)
    print(format_table({"appearances": result}))
    print(json.dumps(result["details"]["times_s"]))


if __name__ == "__main__":
    main()
