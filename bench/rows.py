"""Benchmark 2: UNet row-evaluations per transfer and per step, 4-row swap pass vs the 6-row way.

Counted from ``TransferResult.unet_rows`` on the tiny model with the default step schedule (the
counts depend on the schedule only, not on the model), and computed from the same schedule for SD
1.5 defaults; the two must agree.
"""

from __future__ import annotations

from typing import Any

from bench.common import comparison, test_images, tiny_model_dir
from bench.e2e import QUICK_PARAMS
from qalign_core.params import TransferParams
from qalign_core.schedule import schedule_for


def predicted_rows(params: TransferParams, fused: bool, images_to_invert: int = 2) -> dict[str, int]:
    """Rows the pipeline evaluates for ``params``: inversion (2 CFG rows per image per run step but
    the last, whose noise map is zero) and denoising (3 rows, plus 1 (fused) or 3 (6-row way) on
    iterations where a layer mixes and swap guidance is on)."""
    plan = schedule_for(params)
    denoising = sum(
        (4 if fused else 6) if _two_passes(params, plan, n) else 3 for n in range(plan.iterations)
    )
    return {"inversion": 2 * images_to_invert * (plan.iterations - 1), "denoising": denoising}


def _two_passes(params: TransferParams, plan, n: int) -> bool:
    return plan.any_mixed(n) and plan.guided(n) and params.swap_guidance_scale > 1.0


def aligned_steps(params: TransferParams) -> int:
    plan = schedule_for(params)
    return sum(_two_passes(params, plan, n) for n in range(plan.iterations))


def run(*, device: str = "cpu", quick: bool = False) -> dict[str, Any]:
    """Count rows of one transfer each way (tiny model, default params) and compare with the prediction."""
    from qalign_core.pipeline import PipelineConfig, QAlignPipeline

    # Default schedule; 64 px keeps the tiny model fast (rows do not depend on size). --quick shortens it.
    params = TransferParams(size=64)
    if quick:
        params = TransferParams(size=64, **QUICK_PARAMS)
    structure, appearance = test_images()
    counted: dict[str, dict[str, int]] = {}
    for label, fused in (("fused", True), ("six_row", False)):
        pipe = QAlignPipeline.from_pretrained(
            tiny_model_dir(), device=device, qalign_config=PipelineConfig(fused_swap_pass=fused)
        )
        counted[label] = pipe.transfer(structure, appearance, params).unet_rows
    tiny_predicted = {"fused": predicted_rows(params, True), "six_row": predicted_rows(params, False)}
    sd15 = TransferParams()  # SD 1.5 defaults: 100 steps, skip 32, aligned [10,90) and [10,70)
    predicted = {"fused": predicted_rows(sd15, True), "six_row": predicted_rows(sd15, False)}
    guided = aligned_steps(sd15)
    run_steps = schedule_for(sd15).iterations
    comparisons = []
    sources = (
        (f"tiny model, counted ({params.steps} steps)", counted),
        ("SD 1.5 defaults, computed", predicted),
    )
    for source, rows in sources:
        ours, ref = rows["fused"], rows["six_row"]
        comparisons.append(
            comparison(
                source,
                "rows per transfer",
                "rows",
                float(sum(ours.values())),
                float(sum(ref.values())),
                ours_label="4-row",
                reference_label="6-row",
            )
        )
        comparisons.append(
            comparison(
                source,
                "denoising rows",
                "rows",
                float(ours["denoising"]),
                float(ref["denoising"]),
                ours_label="4-row",
                reference_label="6-row",
            )
        )
    ours_per_step = (predicted["fused"]["denoising"] - 3 * (run_steps - guided)) / guided
    ref_per_step = (predicted["six_row"]["denoising"] - 3 * (run_steps - guided)) / guided
    comparisons.append(
        comparison(
            "SD 1.5 defaults, computed",
            "rows per aligned step",
            "rows",
            ours_per_step,
            ref_per_step,
            ours_label="4-row",
            reference_label="6-row",
            target_max=4 / ref_per_step,
            target_text="4 rows",
        )
    )
    comparisons[-1]["met"] = ours_per_step == 4
    return {
        "name": "rows",
        "comparisons": comparisons,
        "details": {
            "counted_tiny": counted,
            "predicted_sd15": predicted,
            "counted_matches_prediction": counted == tiny_predicted,
            "run_steps": run_steps,
            "aligned_steps": guided,
            "tiny_params": params.model_dump(mode="json"),
        },
    }
