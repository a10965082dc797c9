"""Reading input images safely and preparing them for the model.

Formats are recognised by their magic bytes, never by a file name or a declared type, and the pixel
count is checked from the header before any pixel is decoded (decompression bombs).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps

from qalign_core.errors import InvalidImageError

ALLOWED_FORMATS = ("png", "jpeg", "webp")
#: Default cap on decoded pixels (about 40 megapixels, e.g. 8000 x 5000).
DEFAULT_MAX_PIXELS = 40_000_000

ImageInput = bytes | str | os.PathLike | Image.Image


def sniff_format(data: bytes) -> str | None:
    """ "png", "jpeg" or "webp" from the file signature, or None for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


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
        raise InvalidImageError("the image is empty (0 bytes); send a PNG, JPEG or WebP file")
    fmt = sniff_format(data)
    if fmt is None:
        raise InvalidImageError(
            "not a PNG, JPEG or WebP image (unrecognised file signature); allowed formats: png, jpeg, webp"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[fmt.upper()])
            width, height = image.size
            if width < 1 or height < 1 or width * height > max_pixels:
                raise InvalidImageError(
                    f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels"
                )
            image.load()
    except InvalidImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(
            f"image rejected as a decompression bomb ({exc}); the limit is {max_pixels} pixels"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"the {fmt} image is corrupt or truncated: {exc}") from exc
    return _to_rgb(image)


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


def centre_square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` x ``size`` with bicubic resampling, as CIA does."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    return image.resize((size, size), Image.Resampling.BICUBIC)


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
        raise ValueError(f"output format must be one of png, jpeg, webp; got {fmt!r}")
    return buffer.getvalue()
