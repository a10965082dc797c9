"""Too many pixels is 413 at every size: the limit is read from the header (PNG IHDR, JPEG SOF,
WebP VP8/VP8L/VP8X) before Pillow, whose own decompression-bomb guard would answer otherwise."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image
from testkit import assert_problem, submit

from qalign_core.errors import InvalidImageError
from qalign_core.images import ImageTooLargeError, header_size, load_image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(width: int, height: int) -> bytes:
    """A well-formed PNG declaring ``width`` x ``height`` with a tiny IDAT (a few zero rows)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def huge_jpeg(width: int, height: int) -> bytes:
    """A real small JPEG whose start-of-frame is rewritten to declare ``width`` x ``height``."""
    data = bytearray(encode(Image.new("RGB", (16, 8), (200, 30, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _riff(chunks: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def huge_webp(width: int, height: int) -> bytes:
    """A real small lossy WebP wrapped in an extended (VP8X) container whose canvas is ``width`` x
    ``height`` (VP8X carries 24-bit sizes: the only WebP header that can declare 30000 x 30000)."""
    small = encode(Image.new("RGB", (16, 8), (30, 200, 30)), "WEBP")
    vp8 = small[12:]  # the VP8 chunk, header included
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0"
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return _riff(vp8x + vp8)


def webp_with_size(width: int, height: int, lossless: bool) -> bytes:
    """A real small simple-format WebP (VP8 or VP8L) whose bitstream header declares another size."""
    data = bytearray(encode(Image.new("RGB", (16, 8), (30, 30, 200)), "WEBP", lossless=lossless))
    if lossless:
        assert data[12:16] == b"VP8L"
        bits = struct.unpack("<I", data[21:25])[0] & ~0x0FFFFFFF
        data[21:25] = struct.pack("<I", bits | (width - 1) | ((height - 1) << 14))
    else:
        assert data[12:16] == b"VP8 "
        data[26:30] = struct.pack("<HH", width, height)
    return bytes(data)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (huge_png(30000, 30000), (30000, 30000)),
        (huge_jpeg(30000, 30000), (30000, 30000)),
        (huge_webp(30000, 30000), (30000, 30000)),
        (webp_with_size(16000, 12000, lossless=False), (16000, 12000)),
        (webp_with_size(16000, 12000, lossless=True), (16000, 12000)),
    ],
    ids=["png", "jpeg", "webp-vp8x", "webp-vp8", "webp-vp8l"],
)
def test_header_size_reads_each_format_without_decoding(data, size):
    assert header_size(data) == size


def test_header_size_of_real_images_matches_pillow():
    for fmt, options in [("PNG", {}), ("JPEG", {}), ("WEBP", {}), ("WEBP", {"lossless": True})]:
        data = encode(Image.new("RGB", (37, 21)), fmt, **options)
        assert header_size(data) == (37, 21), fmt
    progressive = encode(Image.new("RGB", (37, 21)), "JPEG", progressive=True)
    assert header_size(progressive) == (37, 21)


def test_load_image_refuses_a_huge_header_as_too_large():
    with pytest.raises(ImageTooLargeError, match="30000x30000 = 900000000 pixels; the limit is"):
        load_image(huge_png(30000, 30000))
    with pytest.raises(InvalidImageError):  # ImageTooLargeError is an InvalidImageError
        load_image(huge_jpeg(30000, 30000))


@pytest.mark.parametrize("build", [huge_png, huge_jpeg, huge_webp], ids=["png", "jpeg", "webp"])
@pytest.mark.parametrize("side", [30000, 10000])
def test_too_many_pixels_is_413_at_every_size(make_client, embedded_settings, small_images, build, side):
    client = make_client()
    limit = embedded_settings.max_pixels
    response = submit(client, (build(side, side), small_images[1]))
    body = assert_problem(response, 413)
    assert body["type"] == "/problems/too-large"
    assert f"structure: the image is {side}x{side} = {side * side} pixels" in body["detail"]
    assert f"the limit is {limit} pixels" in body["detail"]


def test_a_normal_image_still_passes(make_client, small_images):
    client = make_client()
    assert submit(client, small_images).status_code == 202
