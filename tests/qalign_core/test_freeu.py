"""CIA's FreeU: the operation against CIA's own output, and its wiring into every UNet call."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qalign_core.freeu import CIA_STAGES, DecoderFreeU, FreeUStage, apply_freeu, fourier_filter

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "data" / "cia_freeu.safetensors"


def test_each_decoder_stage_matches_cias_freeu():
    """Pairs recorded in CIA's FreeU UNet forward at SD 1.5's widths (tests/golden/make_golden.py):
    what the stage below produced, and what the up block received."""
    pairs = load_file(str(GOLDEN))
    stages = sorted(int(name.rsplit("_", 1)[1]) for name in pairs if name.startswith("freeu_in_"))
    assert [pairs[f"freeu_in_{s}"].shape[1] for s in stages] == [1280, 1280, 1280, 640]
    for s in stages:
        before, after = pairs[f"freeu_in_{s}"], pairs[f"freeu_out_{s}"]
        torch.testing.assert_close(apply_freeu(before), after, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(before, after)  # FreeU did act on every stage


def test_fourier_filter_scales_only_the_centred_low_frequencies():
    x = torch.randn(1, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fourier_filter(x, threshold=1, scale=1.0), x, atol=1e-6)
    constant = torch.ones(1, 1, 8, 8)
    torch.testing.assert_close(fourier_filter(constant, 1, 0.5), constant * 0.5)  # the DC term
    half = fourier_filter(x.half(), 1, 0.9)
    assert half.dtype == torch.float16


def test_other_widths_are_left_alone():
    h = torch.randn(1, 96, 4, 4)
    assert apply_freeu(h) is h


def test_hooks_change_every_up_blocks_input_in_every_call(tiny_model_dir):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet").eval()
    widths = {block.resnets[0].conv1.in_channels for block in unet.up_blocks}
    seen: list[int] = []
    for block in unet.up_blocks:
        block.register_forward_pre_hook(
            lambda m, a, kw: seen.append(kw["hidden_states"].shape[1]), with_kwargs=True
        )
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        plain = unet(x, 500, encoder_hidden_states=cond).sample
        stages = tuple(FreeUStage(c, c // 2, 1.3, 0.5) for c in (32, 64))  # the tiny model's widths
        freeu = DecoderFreeU(stages).attach(unet)
        with_freeu = unet(x, 500, encoder_hidden_states=cond).sample
        again = unet(x, 500, encoder_hidden_states=cond).sample
        freeu.detach()
        detached = unet(x, 500, encoder_hidden_states=cond).sample
    assert widths and len(seen) == 4 * len(unet.up_blocks)
    assert not torch.allclose(with_freeu, plain) and torch.equal(with_freeu, again)
    assert torch.equal(detached, plain)


@pytest.mark.parametrize("stage", CIA_STAGES)
def test_cia_stage_values(stage):
    assert (stage.channels, stage.boosted) in {(1280, 640), (640, 320)}
