"""The processors change row OUT only, only on decoder self-attention at the two finest grids,
only on the configured steps."""

from __future__ import annotations

import torch

from qalign_core.params import TransferParams
from qalign_core.processors import AlignmentState, install_processors
from qalign_core.schedule import schedule_for


def test_alignment_log_covers_exactly_the_configured_layers_and_steps(pipe, photos, fast_params):
    result = pipe.transfer(*photos, fast_params)
    fine_tokens = (pipe.native_size // pipe.vae_scale) ** 2
    layers = {layer for layer, _, _ in result.alignment_log}
    # The tiny UNet, like SD 1.5, has up_blocks 1..3 with attention at 4x4, 8x8 and 16x16 latents.
    assert layers == {
        f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn1" for b in (2, 3) for a in (0, 1)
    }
    assert fine_tokens == 256
    by_block = {
        b: {(step, mode) for layer, step, mode in result.alignment_log if layer.startswith(f"up_blocks.{b}")}
        for b in (2, 3)
    }
    plan = schedule_for(fast_params)
    expected = {
        level: {(n, plan.mode(level, n)) for n in range(plan.iterations) if plan.mode(level, n)}
        for level in (0, 1)
    }
    assert {mode for _, mode in expected[0]} == {"inject", "align"}  # the fast run crosses both
    assert by_block[3] == expected[0] and by_block[2] == expected[1]


def test_only_row_out_changes(tiny_model_dir):
    """With alignment on, rows APP and STRUCT equal a plain evaluation; row OUT differs."""
    from qalign_core.pipeline import QAlignPipeline

    unet = QAlignPipeline.from_pretrained(tiny_model_dir, device="cpu").unet  # its own, it gets rewired
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(3, 4, 16, 16, generator=g)
    embeddings = torch.randn(1, 77, 32, generator=g).expand(3, -1, -1)
    t = torch.tensor(500)
    state = AlignmentState(contrast_strength=1.67, grid=(16, 16), schedule=schedule_for(TransferParams()))
    install_processors(unet, "qalign", state)
    with torch.inference_mode():
        state.iteration = None
        plain = unet(latents, t, encoder_hidden_states=embeddings).sample
        state.iteration = 50
        aligned = unet(latents, t, encoder_hidden_states=embeddings).sample
    torch.testing.assert_close(aligned[1:], plain[1:], rtol=0, atol=0)
    assert (aligned[0] - plain[0]).abs().max() > 1e-3
    assert {layer.split(".attentions")[0] for layer, _, _ in state.log} == {"up_blocks.2", "up_blocks.3"}


def test_two_pairs_on_a_non_square_grid_each_equal_their_single_pair_row(tiny_model_dir):
    """Rows [OUT_1, OUT_2, APP_1, APP_2, STRUCT] on a 16 x 8 latent: APP and STRUCT rows stay plain,
    and OUT_k is the OUT row of the single-pair call [OUT, APP_k, STRUCT] (to rounding)."""
    from qalign_core.pipeline import QAlignPipeline
    from qalign_core.processors import RowLayout

    unet = QAlignPipeline.from_pretrained(tiny_model_dir, device="cpu").unet
    g = torch.Generator().manual_seed(1)
    out, app_1, app_2, struct = torch.randn(4, 4, 16, 8, generator=g)
    embeddings = torch.randn(1, 77, 32, generator=g)
    t = torch.tensor(500)
    state = AlignmentState(contrast_strength=1.67, grid=(16, 8), schedule=schedule_for(TransferParams()))
    install_processors(unet, "qalign", state)

    def run(rows: list[torch.Tensor], pairs: int, iteration: int | None) -> torch.Tensor:
        state.rows, state.iteration = RowLayout(pairs), iteration
        batch = torch.stack(rows)
        return unet(batch, t, encoder_hidden_states=embeddings.expand(len(batch), -1, -1)).sample

    with torch.inference_mode():
        both = run([out, out, app_1, app_2, struct], 2, 50)
        plain = run([out, out, app_1, app_2, struct], 2, None)
        single = [run([out, app, struct], 1, 50)[0] for app in (app_1, app_2)]
    torch.testing.assert_close(both[2:], plain[2:], rtol=1e-5, atol=1e-6)
    for k in range(2):
        torch.testing.assert_close(both[k], single[k], rtol=1e-5, atol=1e-5)
        assert (both[k] - plain[k]).abs().max() > 1e-3
    assert (both[0] - both[1]).abs().max() > 1e-3  # each pair reads its own appearance
