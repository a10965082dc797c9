"""The backbone rule (docs/algorithm.md "Backbones") and the properties every backbone must show.

No reference code exists for SDXL, so the method on it is held to properties, each checked on both
tiny models (SD 1.5's shape and SDXL's, random weights, CPU float32): identity, batch invariance,
non-square shapes, and alignment in exactly the rule's layers.
"""

from __future__ import annotations

import pytest
import torch

from qalign_core.backbones import backbone_from_configs, check_size
from qalign_core.params import TransferParams

#: Published configs (the fields the rule reads) of the real models.
SD15_UNET = {
    "sample_size": 64,
    "block_out_channels": [320, 640, 1280, 1280],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
SDXL_UNET = {
    "sample_size": 128,
    "block_out_channels": [320, 640, 1280],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "addition_embed_type": "text_time",
}
VAE = {"block_out_channels": [128, 256, 512, 512]}


def test_sd15_aligns_the_64_and_32_grids_at_512_px():
    backbone = backbone_from_configs(SD15_UNET, VAE)
    assert (backbone.name, backbone.native_size, backbone.size_unit, backbone.max_size) == (
        "sd15",
        512,
        64,
        1024,
    )
    assert backbone.aligned_blocks(4) == ("up_blocks.3", "up_blocks.2")
    assert backbone.attention_grid((64, 64)) == (64, 64)
    assert [s.backbone_scale for s in backbone.freeu] == [1.2, 1.4]  # CIA's


def test_sdxl_aligns_its_64_and_32_grids_at_1024_px_counting_from_the_finest_with_attention():
    """up_blocks.2 (the 128x128 latent grid) has no attention: levels count from up_blocks.1."""
    backbone = backbone_from_configs(SDXL_UNET, VAE)
    assert (backbone.name, backbone.native_size, backbone.size_unit, backbone.max_size) == (
        "sdxl",
        1024,
        32,
        1536,
    )
    assert backbone.aligned_blocks(3) == ("up_blocks.1", "up_blocks.0")
    # The token counts of the aligned grids equal SD 1.5's at 512 px.
    assert backbone.attention_grid((128, 128)) == (64, 64)
    assert [(s.channels, s.backbone_scale, s.low_frequency_scale) for s in backbone.freeu] == [
        (1280, 1.3, 0.9),
        (640, 1.4, 0.2),
    ]


@pytest.mark.parametrize(
    ("unet", "size", "refused"),
    [(SD15_UNET, 544, True), (SD15_UNET, 1024, False), (SD15_UNET, 1088, True), (SDXL_UNET, 992, False),
     (SDXL_UNET, 1000, True), (SDXL_UNET, 1536, False), (SDXL_UNET, 1568, True)],
)  # fmt: skip
def test_sizes_follow_the_model(unet, size, refused):
    refusal = check_size(backbone_from_configs(unet, VAE), size)
    assert (refusal is not None) == refused
    if refused:
        assert "size: this model" in refusal and "multiple of" in refusal


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def backbone_pipe(request, tiny_models):
    from qalign_core.pipeline import QAlignPipeline

    return QAlignPipeline.from_pretrained(tiny_models[request.param], device="cpu")


def _image_error(a, b) -> float:
    x, y = (torch.from_numpy(__import__("numpy").asarray(i, dtype="float32")) for i in (a, b))
    return float((x - y).norm() / y.norm())


#: A short run that aligns, injects and guides (steps scale CIA's schedule: aligned at 8-10). Square:
#: with aspect=structure the structure is resized whole to the grid while an appearance is
#: cover-cropped, so a non-square photo would not give identical rows.
IDENTITY = TransferParams(steps=16, contrast_strength=1.0, adain="none", aspect="square")
NO_ALIGNMENT = {"align_steps_fine": (0, 0), "align_steps_coarse": (0, 0)}


def test_identity_appearance_equals_the_run_without_alignment(backbone_pipe, photos):
    """Appearance = structure, contrast 1, no AdaIN: Q-Q alignment maps each token to itself and the
    aligned layer is plain attention, so the output is the run with alignment off at every step."""
    aligned = backbone_pipe.transfer(photos[0], photos[0], IDENTITY)
    assert {mode for _, _, mode in aligned.alignment_log} == {"align", "inject"}
    plain = backbone_pipe.transfer(photos[0], photos[0], IDENTITY.model_copy(update=NO_ALIGNMENT))
    assert plain.alignment_log == []
    assert _image_error(aligned.image, plain.image) <= 1e-3
    contrasted = backbone_pipe.transfer(
        photos[0], photos[0], IDENTITY.model_copy(update={"contrast_strength": 1.67})
    )
    assert _image_error(contrasted.image, plain.image) > 1e-3


def test_aligned_layers_are_exactly_the_rules(backbone_pipe, photos):
    """Every decoder self-attention layer of the two aligned blocks appears in the alignment log, at
    its level's iterations, and no other layer does."""
    from qalign_core.processors import is_decoder_self_attention
    from qalign_core.schedule import schedule_for

    params = TransferParams(steps=16, adain="none")
    result = backbone_pipe.transfer(*photos, params)
    fine, coarse = backbone_pipe.backbone.aligned_blocks(len(backbone_pipe.unet.up_blocks))
    expected = {
        name.removesuffix(".processor")
        for name in backbone_pipe.unet.attn_processors
        if is_decoder_self_attention(name) and name.startswith((fine + ".", coarse + "."))
    }
    assert {layer for layer, _, _ in result.alignment_log} == expected
    plan = schedule_for(params)
    for layer, iteration, mode in result.alignment_log:
        level = 0 if layer.startswith(fine + ".") else 1
        assert plan.mode(level, iteration) == mode, (layer, iteration)
    if backbone_pipe.backbone.name == "sdxl":
        assert (fine, coarse) == ("up_blocks.1", "up_blocks.0")
    else:
        assert (fine, coarse) == ("up_blocks.3", "up_blocks.2")


def test_n_appearances_equal_their_single_jobs(backbone_pipe, photos):
    from PIL import Image
    from skimage import data

    looks = [photos[1], Image.fromarray(data.astronaut())]
    params = TransferParams(steps=16, adain="masked")
    both, both_latents = _run_keeping_latents(backbone_pipe, photos[0], looks, params)
    for k, look in enumerate(looks):
        single, single_latents = _run_keeping_latents(backbone_pipe, photos[0], [look], params)
        error = float((both_latents[k] - single_latents[0]).norm() / single_latents[0].norm())
        assert error <= 1e-5, k
        assert both.adain_applied[k] == single.adain_applied[0]


def _run_keeping_latents(pipe, structure, looks, params):
    """The result and the final OUT latents, read through diffusers' step callback."""
    kept = {}

    def keep(_, step, timestep, tensors):
        kept["latents"] = tensors["latents"].clone()
        return tensors

    result = pipe(structure, looks, params, callback_on_step_end=keep)
    return result, kept["latents"][: len(looks)]


@pytest.mark.parametrize("crop", [(3, 2), (2, 3), (16, 9)])
def test_non_square_shapes_run_in_the_structures_shape(backbone_pipe, photos, crop):
    from qalign_core.images import cover_crop, output_shape

    structure = cover_crop(photos[0], 60 * crop[0], 60 * crop[1])
    result = backbone_pipe.transfer(structure, photos[1], TransferParams(steps=6, adain="masked"))
    unit, size = backbone_pipe.size_unit, backbone_pipe.native_size
    assert result.shape == output_shape(structure.size, size, unit)
    assert result.shape.width % unit == 0 and result.shape.height % unit == 0  # the grid it ran at
    assert result.image.size == (result.shape.result_width, result.shape.result_height)
    assert max(result.image.size) == size
    assert abs(result.image.width / result.image.height - crop[0] / crop[1]) <= 0.01 * crop[0] / crop[1]


def test_describe_model_reads_configs_or_says_it_cannot(tiny_models, tmp_path, monkeypatch):
    """The service describes its model without loading it: from a directory's configs, from the Hub
    cache, or not at all (None, never an error) for a missing path or an id that is not cached."""
    from qalign_core.backbones import describe_model

    assert describe_model(tiny_models["sdxl"]).name == "sdxl"
    assert describe_model(tiny_models["sd15"]).name == "sd15"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    assert describe_model(str(tmp_path / "no-model")) is None
    assert describe_model("someone/not-cached") is None
    assert describe_model("model.safetensors") is None
    assert describe_model("model.safetensors", tiny_models["sdxl"]).name == "sdxl"
