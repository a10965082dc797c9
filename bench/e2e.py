"""Benchmark 4: end-to-end transfer time, with and without inversion cache hits.

Per repeat, interleaved: the 6-row way without cache (the plain reference), this project (4-row
swap pass) without cache, and this project again with both inversions served from a fresh
``MemoryInversionCache`` that the previous call filled. On CUDA it also runs SD 1.5's architecture
at 512x512 and SDXL's at 1024x1024, in float16, with random weights built from their configs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.common import comparison, median, test_images, tiny_model_dir
from qalign_core.params import TransferParams

#: --quick: a short run; the schedule scales, so it still crosses injection, alignment and AdaIN.
QUICK_PARAMS = {"steps": 16}


def _measure(
    model_dir: str, device: str, dtype: str | None, params: TransferParams, repeats: int
) -> dict[str, Any]:
    from qalign_core.inversion import MemoryInversionCache
    from qalign_core.pipeline import PipelineConfig, QAlignPipeline

    # Two pipelines, two copies of the same weights: a pipeline installs processors bound to its own
    # AlignmentState, so pipelines must never share one UNet.
    fused = QAlignPipeline.from_pretrained(model_dir, device=device, dtype=dtype)
    six = QAlignPipeline.from_pretrained(
        model_dir, device=device, dtype=dtype, qalign_config=PipelineConfig(fused_swap_pass=False)
    )
    structure, appearance = test_images()
    warm = params.model_copy(update={"steps": 4})
    fused.transfer(structure, appearance, warm)
    runs: dict[str, list[dict[str, float]]] = {"6-row": [], "4-row": [], "4-row cache hit": []}
    hits: list[int] = []
    aligned_calls: dict[str, int] = {}
    for r in range(repeats):
        cache = MemoryInversionCache()
        order = ["6-row", "4-row"] if r % 2 == 0 else ["4-row", "6-row"]
        for label in order:
            if label == "6-row":
                result = six.transfer(structure, appearance, params)
            else:
                result = fused.transfer(structure, appearance, params, inversion_cache=cache)
            runs[label].append(result.timings)
            aligned_calls[label] = len(result.alignment_log)
            if not result.alignment_log:
                raise RuntimeError(f"{label}: no layer was aligned, the transfer would not measure Q-Align")
        hit = fused.transfer(structure, appearance, params, inversion_cache=cache)
        runs["4-row cache hit"].append(hit.timings)
        hits.append(hit.inversion_cache_hits)
    return {
        "timings": runs,
        "cache_hits": hits,
        "aligned_layer_calls": aligned_calls,
        "params": params.model_dump(mode="json"),
    }


def _compare(case: str, measured: dict[str, Any]) -> list[dict[str, Any]]:
    runs = measured["timings"]

    def med(label: str, key: str) -> float:
        return median([t[key] for t in runs[label]])

    return [
        comparison(
            case,
            "transfer time",
            "s",
            med("4-row", "total_s"),
            med("6-row", "total_s"),
            ours_label="4-row",
            reference_label="6-row",
        ),
        comparison(
            case,
            "denoise time",
            "s",
            med("4-row", "denoise_s"),
            med("6-row", "denoise_s"),
            ours_label="4-row",
            reference_label="6-row",
        ),
        comparison(
            case,
            "transfer time, cache hit",
            "s",
            med("4-row cache hit", "total_s"),
            med("4-row", "total_s"),
            ours_label="hit",
            reference_label="miss",
        ),
        comparison(
            case,
            "inversion time, cache hit",
            "s",
            med("4-row cache hit", "inversion_s"),
            med("4-row", "inversion_s"),
            ours_label="hit",
            reference_label="miss",
        ),
    ]


def run(*, device: str = "cpu", quick: bool = False, repeats: int | None = None) -> dict[str, Any]:
    """Tiny model everywhere; SD 1.5 at 512 px and SDXL at 1024 px in float16 where ``device`` is cuda."""
    repeats = repeats if repeats is not None else (1 if quick or device == "cpu" else 3)
    params = TransferParams(**QUICK_PARAMS) if quick else TransferParams()
    comparisons, details = [], {}
    tiny = _measure(tiny_model_dir(), device, None, params, repeats)
    comparisons += _compare(f"tiny model, {params.steps} steps, native size", tiny)
    details["tiny"] = tiny
    if device == "cuda":
        from bench.sd15 import save_sd15_model

        model_dir = save_sd15_model(Path(tempfile.mkdtemp(prefix="qalign-sd15-")) / "sd15")
        sd15 = _measure(str(model_dir), device, "float16", params.model_copy(update={"size": 512}), repeats)
        comparisons += _compare(f"SD 1.5 arch 512px fp16, {params.steps} steps", sd15)
        details["sd15_512_fp16"] = sd15
        from bench.sdxl import save_sdxl_model

        model_dir = save_sdxl_model(Path(tempfile.mkdtemp(prefix="qalign-sdxl-")) / "sdxl")
        sdxl = _measure(str(model_dir), device, "float16", params.model_copy(update={"size": 1024}), repeats)
        comparisons += _compare(f"SDXL arch 1024px fp16, {params.steps} steps", sdxl)
        details["sdxl_1024_fp16"] = sdxl
    else:
        details["sd15_512_fp16"] = details["sdxl_1024_fp16"] = "not run: needs --device cuda"
    for measured in (tiny, details.get("sd15_512_fp16"), details.get("sdxl_1024_fp16")):
        if isinstance(measured, dict):
            runs = measured["timings"]
            measured["inversion_s_saved"] = median([t["inversion_s"] for t in runs["4-row"]]) - median(
                [t["inversion_s"] for t in runs["4-row cache hit"]]
            )
    return {"name": "e2e", "comparisons": comparisons, "details": details}
