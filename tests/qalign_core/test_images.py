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
    ("size", "longer", "aspect", "expected"),
    [
        ((4000, 3000), 512, "structure", (512, 384, False)),
        ((3000, 4000), 512, "structure", (384, 512, False)),
        ((1920, 1080), 512, "structure", (512, 320, False)),  # 288 rounds half up to 320
        ((1080, 1920), 512, "structure", (320, 512, False)),
        ((500, 500), 512, "structure", (512, 512, False)),
        ((4000, 3000), 512, "square", (512, 512, False)),
        ((3000, 1000), 512, "structure", (512, 256, True)),  # 3:1 clamped to 2:1
        ((1000, 3000), 512, "structure", (256, 512, True)),
        ((4000, 100), 128, "structure", (128, 64, True)),  # never below one unit
    ],
)
def test_output_shape_keeps_the_aspect_within_the_unit(size, longer, aspect, expected):
    from qalign_core.images import output_shape

    shape = output_shape(size, longer, 64, aspect)
    assert (shape.width, shape.height, shape.clamped) == expected


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
