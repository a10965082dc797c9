"""Reading input images safely and preparing them for the model.

Formats are recognised by their magic bytes, never by a file name or a declared type, and the pixel
count is checked from the header before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from qalign_core.errors import InvalidImageError
from qalign_schema.params import IMAGE_FORMATS, IMAGE_FORMATS_TEXT

#: Default cap on decoded pixels (about 40 megapixels, e.g. 8000 x 5000).
DEFAULT_MAX_PIXELS = 40_000_000

ImageInput = bytes | str | os.PathLike[str] | Image.Image


def sniff_format(data: bytes) -> str | None:
    """ "png", "jpeg" or "webp" from the file signature, or None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


class ImageTooLargeError(InvalidImageError):
    """The image's header declares more pixels than allowed (HTTP: 413, not 400: a smaller copy
    of the same image is acceptable)."""

    def __init__(self, width: int, height: int, max_pixels: int) -> None:
        super().__init__(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
        )
        self.width, self.height, self.max_pixels = width, height, max_pixels


#: JPEG start-of-frame markers (SOF0-SOF15 less DHT C4, JPG C8 and DAC CC): they carry the size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) declared by a PNG, JPEG or WebP header, read without decoding anything.

    Pillow's ``Image.open`` refuses very large declared sizes itself (its decompression-bomb
    guard), so the pixel limit must be checked before it runs. None when the header cannot be
    read (the decoder then names what is wrong).
    """
    fmt = sniff_format(data)
    try:
        if fmt == "png":
            if data[12:16] != b"IHDR":
                return None
            return struct.unpack(">II", data[16:24])
        if fmt == "jpeg":
            return _jpeg_size(data)
        if fmt == "webp":
            return _webp_size(data)
    except struct.error:  # truncated header
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """Walk the marker segments to the first start-of-frame (height, then width, big-endian)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # standalone markers: no length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        if marker == 0xDA or length < 2:  # scan data before any frame header: not a valid JPEG
            return None
        pos += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    """The size in the first chunk: VP8 (lossy), VP8L (lossless) or VP8X (extended canvas)."""
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and data[20:21] == b"\x2f":
        (bits,) = struct.unpack("<I", data[21:25])
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def check_pixel_count(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """Raise ImageTooLargeError when the header declares over ``max_pixels`` pixels; the declared
    (width, height), or None when there is no readable header. The one home of the pixel rule:
    the service's intake and ``load_image`` both call it before Pillow sees the bytes."""
    size = header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageTooLargeError(size[0], size[1], max_pixels)
    return size


def load_image(source: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an input into an RGB image, or raise InvalidImageError saying what is wrong.

    Handles EXIF rotation, transparency (composited over white), palette, 16-bit and CMYK images.
    """
    if isinstance(source, Image.Image):
        return _to_rgb(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise InvalidImageError(f"cannot read image file {os.fspath(source)!r}: {exc.strerror}") from exc
    else:
        data = bytes(source)
    if not data:
        raise InvalidImageError(f"the image is empty (0 bytes); send a {IMAGE_FORMATS_TEXT} file")
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImageError(
            f"not a {IMAGE_FORMATS_TEXT} image (unrecognised file signature); "
            f"allowed formats: {', '.join(IMAGE_FORMATS)}"
        )
    check_pixel_count(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt.upper()])
            width, height = image.size
            if width * height > max_pixels:  # a header this module could not read
                raise ImageTooLargeError(width, height, max_pixels)
            if width < 1 or height < 1:
                raise InvalidImageError(f"image is {width}x{height} pixels; it has no pixels")
            image.load()
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(
            f"image rejected as a decompression bomb ({exc}); the limit is {max_pixels} pixels"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"the {fmt} image is corrupt or truncated: {decoder_complaint(exc)}") from exc
    return _to_rgb(image)


#: A Python object's repr in a decoder's message (``<_io.BytesIO object at 0x7f...>``).
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")


def decoder_complaint(exc: BaseException) -> str:
    """What the decoder said about bytes it could not decode, in the caller's terms: Pillow's
    "cannot identify image file <_io.BytesIO object at 0x...>" names our buffer, not their file."""
    if isinstance(exc, UnidentifiedImageError):
        return "its header cannot be read"
    text = _OBJECT_REPR.sub("", str(exc)).strip(" :")
    return text or f"the decoder failed ({type(exc).__name__})"


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode != "I" or array.max() > 255 else 1.0
        image = Image.fromarray(np.clip(array / scale, 0, 255).astype(np.uint8)).convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


#: A region of an image: (left, top, right, bottom) in its pixels, right and bottom exclusive.
Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class OutputShape:
    """How a structure image becomes results: the computation grid, the result size and the crop.

    ``width`` x ``height`` is the grid the model runs at (multiples of the size unit). The results
    are ``result_width`` x ``result_height``: the structure's exact aspect (of its crop, if any) at
    the requested size, resized from the grid. ``crop`` is the region of the structure image the
    results show, in its pixels; None when they show all of it.
    """

    width: int
    height: int
    #: The structure image was more elongated than MAX_ASPECT_RATIO and is centre-cropped to it.
    clamped: bool = False
    #: The results' (width, height); None: the grid's.
    result_size: tuple[int, int] | None = None
    crop: Box | None = None

    @property
    def result_width(self) -> int:
        return self.width if self.result_size is None else self.result_size[0]

    @property
    def result_height(self) -> int:
        return self.height if self.result_size is None else self.result_size[1]


def output_shape(
    structure_size: tuple[int, int],
    longer_side: int,
    unit: int,
    aspect: Literal["structure", "square"] = "structure",
    max_ratio: float = 2.0,
) -> OutputShape:
    """How a structure image of ``structure_size`` (width, height) is computed and returned.

    ``aspect="square"``: a ``longer_side`` square grid and result, from the centre square of the
    structure (Cross-Image Attention's crop; ``crop`` says which). ``aspect="structure"``: the whole
    structure (centre-cropped only when more elongated than ``max_ratio``). The result's longer side
    is ``longer_side`` and its shorter side the structure's aspect applied to it, to the pixel. The
    grid's sides are multiples of ``unit`` (every latent grid level then halves exactly): its longer
    side may move by one unit from ``longer_side`` so that its shorter side's rounding leaves the
    smallest aspect error (``grid_for_aspect``). Pure arithmetic, so the service can state it.
    """
    width, height = structure_size
    if aspect == "square" or width == height:
        crop = None if width == height else cover_box(structure_size, 1, 1)
        return OutputShape(longer_side, longer_side, crop=crop)
    ratio = max(width, height) / min(width, height)
    clamped = ratio > max_ratio
    crop = None
    if clamped:
        crop = cover_box(structure_size, *((max_ratio, 1.0) if width > height else (1.0, max_ratio)))
        ratio = max_ratio
    grid_long, grid_short = grid_for_aspect(ratio, longer_side, unit)
    result_short = max(1, round(longer_side / ratio))
    if width > height:
        return OutputShape(grid_long, grid_short, clamped, (longer_side, result_short), crop)
    return OutputShape(grid_short, grid_long, clamped, (result_short, longer_side), crop)


def grid_for_aspect(ratio: float, longer_side: int, unit: int) -> tuple[int, int]:
    """(longer, shorter) grid sides, multiples of ``unit``, nearest to ``ratio`` (>= 1) for a longer
    side of ``longer_side`` or one unit either way: the smallest aspect error wins, then the side
    nearest ``longer_side``, then the smaller grid."""

    def shorter(longer: int) -> int:
        return max(unit, int(longer / ratio / unit + 0.5) * unit)

    candidates = [longer_side + step * unit for step in (0, -1, 1) if longer_side + step * unit >= unit]
    best = min(candidates, key=lambda longer: (round(abs(longer / shorter(longer) / ratio - 1), 12), longer))
    if abs(best / shorter(best) / ratio - 1) >= abs(longer_side / shorter(longer_side) / ratio - 1):
        best = longer_side
    return best, shorter(best)


def cover_box(size: tuple[int, int], width: float, height: float) -> Box:
    """The largest centred region of a ``size`` image with aspect ``width:height``."""
    image_w, image_h = size
    if image_w * height > image_h * width:  # wider than the target: crop the sides
        crop_w, crop_h = round(image_h * width / height), image_h
    else:
        crop_w, crop_h = image_w, round(image_w * height / width)
    left, top = (image_w - crop_w) // 2, (image_h - crop_h) // 2
    return left, top, left + crop_w, top + crop_h


def cover_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """Crop the largest centred region of ``width:height`` aspect, resize bicubic to ``width`` x ``height``.

    For a square target this is exactly CIA's preparation (centre square crop, PIL's bicubic resize).
    """
    image = image.crop(cover_box(image.size, width, height))
    return image.resize((width, height), Image.Resampling.BICUBIC)


def fit_structure(image: Image.Image, shape: OutputShape) -> Image.Image:
    """The structure image as the model sees it: ``shape.crop`` of it (all of it when None) resized
    bicubic to the grid. With aspect=structure the grid's aspect is within a rounding of the
    structure's, so nothing more is cropped (the cover crop that follows keeps every pixel)."""
    box = shape.crop or (0, 0, image.width, image.height)
    if box != (0, 0, image.width, image.height):
        image = image.crop(box)
    return image.resize((shape.width, shape.height), Image.Resampling.BICUBIC)


def fit_result(image: Image.Image, shape: OutputShape) -> Image.Image:
    """A decoded grid-size image resized (Lanczos) to the result size: the structure's exact aspect.
    Unchanged (the same object) when the grid is the result size, as for every square output."""
    size = (shape.result_width, shape.result_height)
    return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)


def centre_square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` x ``size`` with bicubic resampling, as CIA does."""
    return cover_crop(image, size, size)


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """Encode to png/jpeg/webp with fixed settings, so the same pixels give the same bytes."""
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, format="PNG")
    elif fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=95)
    elif fmt == "webp":
        image.save(buffer, format="WEBP", quality=95, method=4)
    else:
        raise ValueError(f"output format must be one of {', '.join(IMAGE_FORMATS)}; got {fmt!r}")
    return buffer.getvalue()
