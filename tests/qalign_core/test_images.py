from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from qalign_core.errors import InvalidImageError
from qalign_core.images import centre_square, encode_image, load_image, sniff_format


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_sniff_by_magic_bytes(photo_bytes):
    png, jpeg = photo_bytes
    webp = _encode(Image.new("RGB", (8, 8)), "WEBP")
    assert [sniff_format(d) for d in (png, jpeg, webp, b"GIF89a...", b"")] == [
        "png",
        "jpeg",
        "webp",
        None,
        None,
    ]


@pytest.mark.parametrize(
    "data,fragment",
    [
        (b"", "empty"),
        (b"hello, I am text pretending to be a png", "not a PNG, JPEG or WebP"),
        (_encode(Image.new("RGB", (8, 8)), "GIF"), "not a PNG, JPEG or WebP"),
    ],
)
def test_refusals_say_what_is_wrong(data, fragment):
    with pytest.raises(InvalidImageError, match=fragment):
        load_image(data)


def test_truncated_images_are_refused(photo_bytes):
    for data in photo_bytes:
        with pytest.raises(InvalidImageError, match="corrupt or truncated"):
            load_image(data[: len(data) // 3])


def test_pixel_bomb_is_refused_from_the_header_before_decoding():
    """A real 8x8 PNG whose header is rewritten to claim 100000 x 100000 pixels."""
    small = _encode(Image.new("RGB", (8, 8)), "PNG")
    ihdr = b"IHDR" + struct.pack(">II", 100_000, 100_000) + small[24:29]
    data = small[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + small[33:]
    with pytest.raises(InvalidImageError, match="limit is"):
        load_image(data)
    with pytest.raises(InvalidImageError, match="limit is 100 pixels"):
        load_image(_encode(Image.new("RGB", (20, 20)), "PNG"), max_pixels=100)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "CMYK", "I;16", "1"])
def test_modes_are_converted_to_rgb(mode):
    image = Image.new(mode, (10, 6))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    assert load_image(_encode(image, fmt)).mode == "RGB"


def test_transparent_pixels_become_white_and_16_bit_is_scaled():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert load_image(_encode(rgba, "PNG")).getpixel((0, 0)) == (255, 255, 255)
    sixteen = Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16))
    assert load_image(_encode(sixteen, "PNG")).getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotation_is_applied():
    image = Image.new("RGB", (20, 10))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    assert load_image(_encode(image, "JPEG", exif=exif)).size == (10, 20)


def test_centre_square_and_deterministic_encoding(photos):
    square = centre_square(photos[0], 64)
    assert square.size == (64, 64)
    for fmt in ("png", "jpeg", "webp"):
        assert encode_image(square, fmt) == encode_image(square, fmt)
        assert sniff_format(encode_image(square, fmt)) == fmt


@pytest.mark.parametrize(
    ("size", "longer", "aspect", "grid", "result", "clamped"),
    [
        ((4000, 3000), 512, "structure", (512, 384), (512, 384), False),
        ((3000, 4000), 512, "structure", (384, 512), (384, 512), False),
        ((1920, 1080), 512, "structure", (576, 320), (512, 288), False),  # 9 units x 5 is 1.25 % off
        ((1080, 1920), 512, "structure", (320, 576), (288, 512), False),
        ((3000, 2000), 512, "structure", (576, 384), (512, 341), False),  # exactly 3:2 one unit up
        ((500, 500), 512, "structure", (512, 512), (512, 512), False),
        ((4000, 3000), 512, "square", (512, 512), (512, 512), False),
        ((3000, 1000), 512, "structure", (512, 256), (512, 256), True),  # 3:1 clamped to 2:1
        ((1000, 3000), 512, "structure", (256, 512), (256, 512), True),
        ((4000, 100), 128, "structure", (128, 64), (128, 64), True),  # never below one unit
    ],
)
def test_output_shape_grid_and_result(size, longer, aspect, grid, result, clamped):
    from qalign_core.images import output_shape

    shape = output_shape(size, longer, 64, aspect)
    assert (shape.width, shape.height) == grid
    assert (shape.result_width, shape.result_height) == result and shape.clamped is clamped


@pytest.mark.parametrize("unit,longer", [(64, 512), (32, 1024), (64, 128)])
@pytest.mark.parametrize(
    "ratio", [(1, 2), (9, 16), (2, 3), (3, 4), (4, 5), (5, 4), (4, 3), (3, 2), (16, 9), (2, 1)]
)
def test_aspect_structure_keeps_the_whole_structure_at_its_aspect(unit, longer, ratio):
    """The issue's target: no area lost and the result's aspect within 1 % for 1:2 .. 2:1, at 512
    (SD 1.5), 1024 (SDXL) and the tiny model's 128; the grid is within one unit of the request."""
    from qalign_core.images import output_shape

    structure = (ratio[0] * 397, ratio[1] * 397)  # an odd pixel size: no ratio divides it evenly
    shape = output_shape(structure, longer, unit, "structure")
    assert shape.crop is None and not shape.clamped, "the whole structure is used"
    assert max(shape.result_width, shape.result_height) == longer
    result_aspect = shape.result_width / shape.result_height
    assert abs(result_aspect / (ratio[0] / ratio[1]) - 1) < 0.01
    assert shape.width % unit == 0 and shape.height % unit == 0
    assert abs(max(shape.width, shape.height) - longer) <= unit


def test_the_grid_moves_only_when_that_is_closer_to_the_aspect():
    from qalign_core.images import grid_for_aspect

    assert grid_for_aspect(4 / 3, 512, 64) == (512, 384), "exact at the request: it stays"
    assert grid_for_aspect(3 / 2, 512, 64) == (576, 384), "one unit up makes 3:2 exact"
    assert grid_for_aspect(16 / 9, 512, 64) == (576, 320)
    assert grid_for_aspect(2.0, 64, 64) == (128, 64), "the shorter side is at least one unit"


def test_crop_boxes_are_in_structure_pixels():
    from qalign_core.images import output_shape

    assert output_shape((3000, 1000), 512, 64).crop == (500, 0, 2500, 1000)  # 3:1 -> centred 2:1
    assert output_shape((1000, 3000), 512, 64).crop == (0, 500, 1000, 2500)
    assert output_shape((4000, 3000), 512, 64, "square").crop == (500, 0, 3500, 3000)
    assert output_shape((600, 600), 512, 64, "square").crop is None
    assert output_shape((4000, 3000), 512, 64).crop is None


def test_fit_structure_then_cover_crop_is_the_old_square_preparation(photos):
    """The golden path: aspect=square through fit_structure gives the very pixels cover_crop gave."""
    from qalign_core.images import cover_crop, fit_structure, output_shape

    for image in (photos[0], photos[0].transpose(Image.Transpose.ROTATE_90)):
        shape = output_shape(image.size, 64, 64, "square")
        prepared = cover_crop(fit_structure(image, shape), shape.width, shape.height)
        assert np.array_equal(np.asarray(prepared), np.asarray(cover_crop(image, 64, 64)))


def test_fit_structure_keeps_every_pixel_and_fit_result_restores_the_aspect():
    from qalign_core.images import cover_crop, fit_result, fit_structure, output_shape

    columns = (np.arange(300) * 255 // 299).astype(np.uint8)  # 3:2, black at the left, white at the right
    gradient = np.tile(columns[None, :, None], (200, 1, 3))
    image = Image.fromarray(gradient)
    shape = output_shape(image.size, 128, 64, "structure")
    fitted = fit_structure(image, shape)
    assert fitted.size == (shape.width, shape.height) == (192, 128)
    prepared = np.asarray(cover_crop(fitted, shape.width, shape.height))
    assert prepared[:, 0, 0].max() <= 2 and prepared[:, -1, 0].min() >= 253, "both edges survive"
    result = fit_result(Image.new("RGB", (shape.width, shape.height)), shape)
    assert result.size == (128, 85)
    same = Image.new("RGB", (64, 64))
    assert fit_result(same, output_shape((10, 10), 64, 64)) is same, "a square result is untouched"


def test_cover_crop_of_a_square_target_is_cias_centre_square(photos):
    from qalign_core.images import cover_crop

    image = photos[0]
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    cias = image.crop((left, top, left + side, top + side)).resize((64, 64), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(cover_crop(image, 64, 64)), np.asarray(cias))
    wide = cover_crop(image, 128, 64)
    assert wide.size == (128, 64)


def test_a_corrupt_image_is_named_without_python_object_reprs():
    with pytest.raises(InvalidImageError) as caught:
        load_image(b"\x89PNG\r\n\x1a\n" + b"\x10" * 40)
    assert str(caught.value) == "the png image is corrupt or truncated: its header cannot be read"


@pytest.mark.parametrize(
    "message,expected",
    [
        ("cannot identify image file <_io.BytesIO object at 0x7f3a2b1c>", "cannot identify image file"),
        ("broken data stream when reading image file", "broken data stream when reading image file"),
        ("<_io.BytesIO object at 0xdeadbeef>", "the decoder failed (OSError)"),
    ],
)
def test_decoder_complaint_drops_object_reprs(message, expected):
    from qalign_core.images import decoder_complaint

    assert decoder_complaint(OSError(message)) == expected
