"""Full transfers with the tiny random-weight model on real photographs (CPU, float32)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from qalign_core.errors import ModelLoadError, TransferCanceled
from qalign_core.inversion import MemoryInversionCache
from qalign_core.params import TransferParams
from qalign_core.schedule import schedule_for


@pytest.fixture(scope="module")
def baseline(pipe, photos, fast_params):
    return pipe.transfer(*photos, fast_params)


def test_transfer_keeps_the_structure_aspect_at_the_native_longer_side(baseline, pipe, photos):
    """The cat is 451 x 300 (3:2): 128 x 85 px, its whole picture, computed on a 192 x 128 grid (the
    tiny model's 64 px unit: one unit more on the longer side makes 3:2 exact)."""
    assert photos[0].size == (451, 300) and pipe.native_size == 128 and pipe.size_unit == 64
    assert baseline.image.size == (128, 85) and len(baseline.images) == 1
    assert (baseline.shape.width, baseline.shape.height, baseline.shape.clamped) == (192, 128, False)
    assert baseline.shape.crop is None and baseline.diagnostics["crop"] is None
    assert (baseline.diagnostics["grid_width"], baseline.diagnostics["output_width"]) == (192, 128)
    pixels = np.asarray(baseline.image, dtype=np.float32)
    assert pixels.std() > 5.0  # not constant
    assert baseline.params.size == 128
    assert set(baseline.timings) == {"inversion_s", "denoise_s", "decode_s", "total_s"}


def test_square_aspect_is_the_centre_square(pipe, photos, fast_params):
    square = pipe.transfer(*photos, fast_params.model_copy(update={"aspect": "square"}))
    assert square.image.size == (128, 128)
    assert square.diagnostics["crop"] == [75, 0, 375, 300], "the cat's centre square, in its pixels"


@pytest.mark.parametrize(
    ("crop", "expected"),
    [((4, 3), (256, 192)), ((3, 4), (192, 256)), ((16, 9), (256, 144)), ((9, 16), (144, 256))],
)
def test_photo_shapes_come_back_in_their_shape(pipe, photos, crop, expected):
    """4:3, 3:4, 16:9 and 9:16 photos at a 256 px longer side come back at their exact aspect."""
    from qalign_core.images import cover_crop

    ratio_w, ratio_h = crop
    structure = cover_crop(photos[0], 40 * ratio_w, 40 * ratio_h)
    result = pipe.transfer(structure, photos[1], TransferParams(steps=4, size=256, adain="plain"))
    assert result.image.size == expected
    width, height = result.image.size
    exact_short = 256 * min(ratio_w, ratio_h) / max(ratio_w, ratio_h)
    assert abs(min(width, height) - exact_short) <= 0.5 and result.shape.crop is None


def _latents(pipe, structure, appearances, params, config=None):
    """The final latents of a transfer, one per appearance, through the pipeline's own steps."""
    from qalign_core.images import output_shape

    if params.size is None:
        params = params.model_copy(update={"size": pipe.native_size})
    original = pipe.qalign_config
    pipe.qalign_config = config or original
    try:
        with torch.inference_mode():
            shape = output_shape(structure.size, params.size, pipe.size_unit, params.aspect)
            pixels = [pipe.prepare_image(image, shape) for image in (structure, *appearances)]
            cond, uncond = pipe.encode_prompt(params.effective_prompt)
            ddpm, plan = pipe.ddpm_schedule(params.steps), schedule_for(params)
            inversions, _ = pipe.invert_images(
                pixels, params, ddpm, plan, cond, uncond, lambda *a: None, None
            )
            latents, _, _ = pipe.denoise(
                inversions[0], inversions[1:], params, ddpm, plan, cond, lambda *a: None
            )
    finally:
        pipe.qalign_config = original
    return latents


@pytest.fixture(scope="module")
def four_looks(photos):
    from skimage import data

    return [
        photos[1],
        *(Image.fromarray(x) for x in (data.astronaut(), data.rocket(), data.immunohistochemistry())),
    ]


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_many_appearances_equal_single_pair_jobs(pipe, photos, four_looks):
    """Batch invariance: image k of a 4-appearance transfer is the single-pair transfer with
    appearance k (final latent within 1e-5 relative L2 on CPU float32)."""
    params = TransferParams(steps=16, size=128)
    many = _latents(pipe, photos[0], four_looks, params)
    assert many.shape[0] == 4
    for k, look in enumerate(four_looks):
        single = _latents(pipe, photos[0], [look], params)
        assert _relative_error(many[k], single[0]) <= 1e-5, f"appearance {k}"


def test_four_appearances_run_thirteen_rows_per_aligned_step(pipe, photos, four_looks, fast_params):
    result = pipe.transfer(photos[0], four_looks, fast_params)
    assert len(result.images) == 4 and {image.size for image in result.images} == {(128, 85)}
    plan = schedule_for(fast_params)
    aligned = sum(plan.any_mixed(n) and plan.guided(n) for n in range(plan.iterations))
    assert result.rows_per_step == 13 == 3 * 4 + 1
    assert result.unet_rows["denoising"] == 13 * aligned + 9 * (plan.iterations - aligned)
    # One structure and four appearances inverted: 5 images x (uncond, cond).
    assert result.unet_rows["inversion"] == 2 * 5 * (plan.iterations - 1)
    assert len(result.adain_applied) == len(result.object_masks) == 4
    assert result.diagnostics["rows_per_step"] == 13


def test_batches_of_pairs_bound_the_rows_and_keep_the_images(pipe, photos, four_looks):
    """max_pairs_per_batch=2 splits 3 appearances into batches of 2 and 1 (7 + 4 rows per aligned
    step); the images stay those of one batch."""
    params = TransferParams(steps=16, size=128, adain="plain")
    looks = four_looks[:3]
    one_batch = _latents(pipe, photos[0], looks, params)
    split = dataclasses.replace(pipe.qalign_config, max_pairs_per_batch=2)
    two_batches = _latents(pipe, photos[0], looks, params, config=split)
    for k in range(3):
        assert _relative_error(two_batches[k], one_batch[k]) <= 1e-5
    original = pipe.qalign_config
    pipe.qalign_config = split
    try:
        assert pipe.transfer(photos[0], looks, params).rows_per_step == 7 + 4
    finally:
        pipe.qalign_config = original


@pytest.mark.parametrize("count", [0, 9])
def test_appearance_count_outside_one_to_eight_is_refused(pipe, photos, fast_params, count):
    from qalign_core.errors import InvalidParametersError

    with pytest.raises(InvalidParametersError, match=rf"^appearance: give 1 to 8 .*got {count}$"):
        pipe.transfer(photos[0], [photos[1]] * count, fast_params)


def test_the_structure_inversion_is_shared_through_the_cache(pipe, photos, four_looks, fast_params):
    cache = MemoryInversionCache()
    pipe.transfer(photos[0], four_looks[0], fast_params, inversion_cache=cache)
    both = pipe.transfer(photos[0], four_looks[:2], fast_params, inversion_cache=cache)
    assert both.inversion_cache_hits == 2  # the structure and the first appearance


def test_same_seed_gives_identical_bytes(baseline, pipe, photos, fast_params):
    again = pipe.transfer(*photos, fast_params)
    assert again.encode() == baseline.encode()


@pytest.mark.parametrize("change", [{"seed": 1}, {"method": "cross_image"}, {"per_head": True}])
def test_other_seed_or_method_changes_the_output(baseline, pipe, photos, fast_params, change):
    other = pipe.transfer(*photos, fast_params.model_copy(update=change))
    assert other.encode() != baseline.encode()


def test_explicit_size_and_formats(pipe, photos, fast_params):
    result = pipe.transfer(*photos, fast_params.model_copy(update={"size": 64, "output_format": "webp"}))
    assert result.image.size == (64, 43)  # the cat's 3:2, on a grid of at least one unit a side
    assert result.encode()[8:12] == b"WEBP" and result.content_type == "image/webp"


def test_four_rows_per_step_equal_the_six_row_way(pipe, photos, fast_params):
    """One 4-row call per aligned step gives the bit-identical result of two 3-row calls (square: on
    other grids the CPU's convolutions may round differently by batch size, see the batch test)."""
    square = fast_params.model_copy(update={"aspect": "square"})
    fused = pipe.transfer(*photos, square)
    original = pipe.qalign_config
    pipe.qalign_config = dataclasses.replace(original, fused_swap_pass=False)
    try:
        six_rows = pipe.transfer(*photos, square)
        non_square_six = _latents(pipe, photos[0], [photos[1]], fast_params, pipe.qalign_config)
    finally:
        pipe.qalign_config = original
    assert np.array_equal(np.asarray(fused.image), np.asarray(six_rows.image))
    non_square_fused = _latents(pipe, photos[0], [photos[1]], fast_params)
    assert _relative_error(non_square_fused, non_square_six) <= 1e-5
    plan = schedule_for(fast_params)
    run_steps = plan.iterations
    aligned_steps = sum(plan.any_mixed(n) and plan.guided(n) for n in range(run_steps))
    assert aligned_steps == 8
    assert fused.unet_rows["denoising"] == 4 * aligned_steps + 3 * (run_steps - aligned_steps)
    assert six_rows.unet_rows["denoising"] == 6 * aligned_steps + 3 * (run_steps - aligned_steps)
    # 2 images x (uncond, cond), only the steps that run, and not the last: its noise map is zero.
    assert fused.unet_rows["inversion"] == 4 * (run_steps - 1)


def test_inversion_cache_hits_skip_inversion_and_keep_the_result(pipe, photos, fast_params):
    cache = MemoryInversionCache()
    first = pipe.transfer(*photos, fast_params, inversion_cache=cache)
    second = pipe.transfer(*photos, fast_params, inversion_cache=cache)
    assert (first.inversion_cache_hits, second.inversion_cache_hits) == (0, 2)
    assert second.unet_rows["inversion"] == 0
    assert second.encode() == first.encode()
    # Roles swapped: the cup (exactly 3:2) is prepared alike either way and its inversion is reused;
    # the cat (451 x 300) is resized whole as a structure but cover-cropped to the 3:2 grid as an
    # appearance (a column less): other pixels, another inversion.
    swapped = pipe.transfer(photos[1], photos[0], fast_params, inversion_cache=cache)
    assert photos[1].size == (600, 400) and swapped.inversion_cache_hits == 1


def test_plain_generation_from_inverted_latents_reconstructs_the_image_latent(tiny_model_dir, photos):
    """Round trip: invert (guidance 1, as the plain generation uses), then denoise with no alignment,
    no AdaIN and the stored noise maps: row OUT lands on the structure's clean latent. The stored last
    map is zero (CIA), so the solved one is put back to check the round trip exactly."""
    from qalign_core.inversion import Inversion, noise_seed
    from qalign_core.pipeline import PipelineConfig, QAlignPipeline

    pipe = QAlignPipeline.from_pretrained(
        tiny_model_dir, device="cpu", qalign_config=PipelineConfig(inversion_guidance=1.0)
    )
    params = TransferParams(
        steps=20, skip_steps=25, align_steps_fine=(0, 0), align_steps_coarse=(0, 0), adain="none", size=128
    )
    with torch.inference_mode():
        pixels = [pipe.prepare_image(p, 128) for p in photos]
        cond, uncond = pipe.encode_prompt(params.effective_prompt)
        ddpm = pipe.ddpm_schedule(params.steps)
        plan = schedule_for(params)
        inversions, _ = pipe.invert_images(pixels, params, ddpm, plan, cond, uncond, lambda *a: None, None)
        clean = pipe.encode_images(pixels)[0]
        seed = noise_seed(pixels[0].numpy().tobytes(), params.seed)
        xs = ddpm.noisy_latents(clean, torch.Generator("cpu").manual_seed(seed))
        assert torch.equal(inversions[0].start_latent, xs[plan.skip])
        assert inversions[0].noise_maps[-1].abs().max() == 0
        last = len(ddpm) - 1
        eps = pipe.inversion_noise(ddpm, cond, uncond, batch=1)(xs[last][None], last)
        solved = ddpm.noise_map(xs[last][None], xs[last + 1][None], eps, last)
        structure = Inversion(inversions[0].start_latent, torch.cat([inversions[0].noise_maps[:-1], solved]))
        reconstructed, masks, applied = pipe.denoise(
            structure, inversions[1:], params, ddpm, plan, cond, lambda *a: None
        )
    assert (masks, applied) == ([None], ["none"])
    # Tolerance: float32 rounding through 14 steps; latents are O(0.1) for the tiny VAE.
    torch.testing.assert_close(reconstructed[0], clean, rtol=1e-4, atol=2e-4)
    assert clean.abs().mean() > 1e-2


def test_each_schedule_parameter_changes_the_output(pipe, photos):
    """No dead parameter: moving each schedule bound (within the run) changes the image."""
    base = TransferParams(steps=20, adain="plain")  # skip 6, 14 iterations
    reference = pipe.transfer(*photos, base).encode()
    moves = {
        "skip_steps": 50,
        "align_steps_fine": (30, 90),
        "align_steps_fine ": (10, 40),
        "align_steps_coarse": (30, 70),
        "align_steps_coarse ": (10, 40),
        "adain_steps": (50, 100),
        "adain_steps ": (20, 50),
    }
    for name, value in moves.items():
        moved = pipe.transfer(*photos, base.model_copy(update={name.strip(): value}))
        assert moved.encode() != reference, f"{name.strip()}={value} left the image unchanged"


def test_masked_adain_reports_what_it_applied(pipe, photos, fast_params):
    masked = pipe.transfer(*photos, fast_params)
    [masks] = masked.object_masks
    assert masks is not None
    assert masked.adain_applied == ["masked" if masks.found else "plain"]
    assert masked.diagnostics == {
        "adain_applied": masked.adain_applied,
        "object_masks_found": [masks.found],
        "output_width": 128,
        "output_height": 85,
        "aspect_clamped": False,
        "grid_width": 192,
        "grid_height": 128,
        "crop": None,
        "rows_per_step": 4,
    }
    if masks.found:  # on the grid's latent
        assert masks.structure.shape == (128 // pipe.vae_scale, 192 // pipe.vae_scale)
    else:
        assert masks.reason
    plain = pipe.transfer(*photos, fast_params.model_copy(update={"adain": "plain"}))
    assert (plain.adain_applied, plain.object_masks) == (["plain"], [None])
    none = pipe.transfer(*photos, fast_params.model_copy(update={"adain": "none"}))
    assert none.adain_applied == ["none"] and none.encode() != plain.encode()


def test_qalign_differs_from_cross_image_only_in_the_aligned_layer(pipe, photos, fast_params, monkeypatch):
    """Same pipeline: with Q-Align's layer swapped back to CIA's, method=qalign is bit-identical."""
    from qalign_core.processors import CrossImageAttnProcessor, QAlignAttnProcessor

    cia = pipe.transfer(*photos, fast_params.model_copy(update={"method": "cross_image"}))
    qalign = pipe.transfer(*photos, fast_params)
    assert qalign.encode() != cia.encode()
    monkeypatch.setattr(QAlignAttnProcessor, "attend_appearance", CrossImageAttnProcessor.attend_appearance)
    swapped_back = pipe.transfer(*photos, fast_params)
    assert np.array_equal(np.asarray(swapped_back.image), np.asarray(cia.image))


def test_progress_reports_every_stage_in_order_and_cancel_stops(pipe, photos, fast_params):
    seen = []
    pipe.transfer(*photos, fast_params, progress=lambda stage, fraction: seen.append((stage, fraction)))
    stages = list(dict.fromkeys(stage for stage, _ in seen))
    assert stages == ["loading", "inverting", "denoising", "decoding"]
    assert seen[-1] == ("decoding", 1.0)
    assert all(0.0 <= f <= 1.0 for _, f in seen)

    calls = []

    def cancel_after_five():
        calls.append(1)
        return len(calls) > 5

    with pytest.raises(TransferCanceled):
        pipe.transfer(*photos, fast_params, should_cancel=cancel_after_five)
    assert len(calls) == 6


def test_bad_size_for_model_is_refused(pipe, photos, fast_params):
    with pytest.raises(ValueError, match="multiple of 64"):
        pipe.transfer(
            *photos,
            fast_params.model_copy(update={"size": 96}),
        )


def test_missing_model_is_a_clear_error(tmp_path):
    from qalign_core.pipeline import QAlignPipeline

    with pytest.raises(ModelLoadError, match="does not exist"):
        QAlignPipeline.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(ModelLoadError, match="cannot load model"):
        QAlignPipeline.from_pretrained(str(tmp_path))  # a directory, but not a model


def _disc_mask(size: int = 200) -> Image.Image:
    """White disc (the object) on black."""
    yy, xx = np.mgrid[:size, :size]
    return Image.fromarray(
        ((xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 3) ** 2).astype(np.uint8) * 255
    )


def test_leakage_diagnostic_is_recorded_on_aligned_calls_only(pipe, photos, fast_params):
    masks = (_disc_mask(), _disc_mask())
    plain = pipe.transfer(*photos, fast_params)
    measured = pipe.transfer(*photos, fast_params, object_masks=masks)
    assert measured.encode() == plain.encode()  # a diagnostic never changes the result
    aligned = {(layer, step) for layer, step, mode in measured.alignment_log if mode == "align"}
    assert {(layer, step) for layer, step, _ in measured.leakage_log} == aligned
    assert all(0.0 <= value <= 1.0 for _, _, value in measured.leakage_log)
    assert 0.0 < measured.mean_leakage < 1.0
    assert plain.mean_leakage is None and plain.leakage_log == []
    cia = pipe.transfer(*photos, fast_params.model_copy(update={"method": "cross_image"}), object_masks=masks)
    assert cia.mean_leakage is not None and cia.mean_leakage != measured.mean_leakage


@pytest.mark.parametrize("steps", [1000, 1001])
def test_steps_the_scheduler_cannot_run_are_refused_naming_steps(pipe, steps):
    """Validation stops these first (at most 999); a model whose scheduler is shorter still gets a
    clear refusal, never an IndexError mid-run."""
    from qalign_core.errors import InvalidParametersError

    with pytest.raises(InvalidParametersError, match=r"^steps: .*at most 999; got"):
        pipe.ddpm_schedule(steps)
    assert len(pipe.ddpm_schedule(999)) == 999


def test_callback_on_step_end_sees_every_iteration_and_interrupt_stops_the_run(pipe, photos, fast_params):
    """diffusers' step callback: called after each denoising iteration with the batch's latents;
    setting ``_interrupt`` stops the run with TransferCanceled at the next step."""
    plan = schedule_for(fast_params)
    seen: list[tuple[int, tuple[int, ...]]] = []

    def record(p, step, timestep, tensors):
        seen.append((step, tuple(tensors["latents"].shape)))
        return tensors

    result = pipe(*photos, fast_params, callback_on_step_end=record)
    assert [step for step, _ in seen] == list(range(plan.iterations))
    assert seen[0][1][0] == 3  # OUT, APP, STRUCT
    assert result.image.size == (result.shape.result_width, result.shape.result_height)

    def stop_after_two(p, step, timestep, tensors):
        if step == 1:
            p._interrupt = True
        return tensors

    with pytest.raises(TransferCanceled, match="denoising"):
        pipe(*photos, fast_params, callback_on_step_end=stop_after_two)
    assert pipe.transfer(*photos, fast_params).encode() == result.encode(), "the flag resets per run"


def test_sdxl_vae_runs_in_float32_when_the_model_is_half(tiny_sdxl_model_dir):
    """SDXL's VAE overflows in float16: with ``force_upcast`` it encodes and decodes in float32 and
    goes back to float16 afterwards (diffusers' SDXL pipelines do the same)."""
    from qalign_core.pipeline import QAlignPipeline

    pipe = QAlignPipeline.from_pretrained(tiny_sdxl_model_dir, device="cpu", dtype="float16")
    seen: list[torch.dtype] = []
    pipe.vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    with torch.inference_mode():
        image = pipe.decode(torch.zeros(4, 8, 8, dtype=torch.float16))
    assert seen == [torch.float32] and pipe.vae.dtype == torch.float16
    assert image.size == (64, 64)


def test_images_go_through_vae_image_processor_bit_for_bit(pipe, photos):
    """VaeImageProcessor's conversions give exactly the plain formulas: ``x / 127.5 - 1`` in NCHW
    (its channels-last view, convolved as is, would round differently) and ``round(255 * clamp)``."""
    from qalign_core.images import OutputShape

    with torch.inference_mode():
        pixels = [pipe.prepare_image(image, OutputShape(128, 64)) for image in photos]
        plain = (
            pipe.vae.encode(torch.stack(pixels).float() / 127.5 - 1.0).latent_dist.mean * pipe.latent_scale
        )
        assert torch.equal(pipe.encode_images(pixels), plain)
        latent = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(0))
        decoded = pipe.vae.decode(latent[None] / pipe.latent_scale).sample[0]
        expected = ((decoded / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(np.asarray(pipe.decode(latent)), expected)
