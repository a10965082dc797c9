"""Benchmark 3: one aligned denoising step of SD 1.5's UNet (random weights), 4 rows vs 6 rows.

The UNet is set up as ``QAlignPipeline`` sets it up (FreeU, shared timestep rows, the project's
processors, an ``AlignmentState`` at an aligned iteration). "4-row" is the fused swap pass, rows
[OUT swap, APP, STRUCT, OUT plain] in one call; "6-row" is one 3-row call with alignment and one
without. Their outputs must agree, and are compared.
"""

from __future__ import annotations

from typing import Any

import torch

from bench.common import comparison, median, time_interleaved
from bench.sd15 import build_unet
from qalign_core.freeu import DecoderFreeU
from qalign_core.params import TransferParams
from qalign_core.pipeline import PipelineConfig, share_timestep_rows
from qalign_core.processors import OUT, AlignmentState, install_processors
from qalign_core.schedule import schedule_for

#: An iteration aligned at both grid levels, not a structure-injection one (default schedule).
ALIGNED_STEP = 50
TIMESTEP = 500
CONTRAST = 1.67


def run(
    *,
    device: str = "cpu",
    quick: bool = False,
    latents: tuple[tuple[int, int], ...] | None = None,
    unet: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Time the 4-row call and the two 3-row calls per latent size; ``latents`` is (side, repeats)."""
    if latents is None:
        if device == "cuda":
            latents = ((16, 3),) if quick else ((64, 20), (32, 20))
        else:
            # 64x64 (512 px) costs minutes per repeat on a loaded 2-core VM; ask for it with --unet-latents.
            latents = ((8, 1),) if quick else ((32, 1), (16, 3))
    dtype = torch.float16 if device == "cuda" else torch.float32
    unet = unet if unet is not None else build_unet()
    unet = unet.to(device=device)
    if unet.dtype != dtype:
        unet = unet.to(dtype=dtype)
    if PipelineConfig().freeu == "cia":
        DecoderFreeU().attach(unet)
    share_timestep_rows(unet)
    state = AlignmentState(contrast_strength=CONTRAST, schedule=schedule_for(TransferParams()))
    install_processors(unet, "qalign", state)
    generator = torch.Generator("cpu").manual_seed(0)
    cond = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator).to(device, dtype)
    t = torch.tensor(TIMESTEP, device=device)

    comparisons, details = [], []
    for side, repeats in latents:
        x = torch.randn(3, unet.config.in_channels, side, side, generator=generator).to(device, dtype)
        state.grid = (side, side)

        def four_rows(x: torch.Tensor = x) -> torch.Tensor:
            state.iteration = ALIGNED_STEP
            state.log.clear()
            return unet(torch.cat([x, x[:1]]), t, encoder_hidden_states=cond.expand(4, -1, -1)).sample

        def six_rows(x: torch.Tensor = x) -> tuple[torch.Tensor, torch.Tensor]:
            state.iteration = ALIGNED_STEP
            state.log.clear()
            swap = unet(x, t, encoder_hidden_states=cond.expand(3, -1, -1)).sample
            aligned_calls = len(state.log)
            state.iteration = None
            plain = unet(x, t, encoder_hidden_states=cond.expand(3, -1, -1)).sample[OUT]
            state.iteration = ALIGNED_STEP
            assert aligned_calls > 0, "no layer was aligned: the benchmark would measure plain attention"
            return swap, plain

        with torch.inference_mode():
            fused = four_rows()
            aligned_layers = len(state.log)
            swap, plain = six_rows()
            diff = max(
                (fused[:3] - swap).abs().max().item(),
                (fused[3] - plain).abs().max().item(),
            )
            scale = max(swap.abs().max().item(), 1e-12)
            times = time_interleaved({"4-row": four_rows, "6-row": six_rows}, device, repeats, warmup=1)
        t_ours, t_ref = median(times["4-row"]), median(times["6-row"])
        comparisons.append(
            comparison(
                f"SD 1.5 UNet, latent {side}x{side}",
                "step time",
                "s",
                t_ours,
                t_ref,
                ours_label="4-row",
                reference_label="6-row",
            )
        )
        details.append(
            {
                "latent": side,
                "dtype": str(dtype),
                "repeats": repeats,
                "times_s": times,
                "aligned_layer_calls_per_pass": aligned_layers,
                "max_abs_diff_4row_vs_6row": diff,
                "max_abs_output": scale,
                "bit_identical": diff == 0.0,
            }
        )
    return {"name": "unet_step", "comparisons": comparisons, "details": details}
