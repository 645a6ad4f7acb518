"""Images coming in (subject uploads now, training uploads and fetched URLs in a preparation step): checked from
their headers before decoding (``inspect`` alone, where the decoding is left to a worker), normalised, metadata
stripped.

Pillow decodes only PNG, JPEG and WebP here; the byte and pixel limits are checked from the header before any pixel
is decoded (a decompression bomb never reaches ``load()``); EXIF orientation is applied and every other piece of
metadata (EXIF with GPS, ICC, text chunks) is dropped by re-encoding the pixels as PNG. A subject's photo also goes
through the face detector (``find_face``, ``shared.faces``) while its pixels are decoded.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from shared import faces, limits
from shared.errors import IllustrationsError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")


class ImageRejected(IllustrationsError):
    """An input image we refuse; the message says why, in terms safe to show the client."""


@dataclass(frozen=True)
class NormalisedImage:
    png: bytes
    sha256: str
    width: int
    height: int
    face: faces.FaceDetection | None = None  # with ``find_face``: what the face detector found


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without decoding a pixel."""

    format: str  # PNG, JPEG or WEBP
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def content_type(self) -> str:
        return Image.MIME[self.format]


def _open(data: bytes, max_bytes: int, max_pixels: int) -> Image.Image:
    """Open lazily (Pillow reads the header; no pixel is decoded) and check format, bytes and pixels."""
    if not data:
        raise ImageRejected("the image is empty")
    if len(data) > max_bytes:
        raise ImageRejected(f"the image is larger than {max_bytes} bytes")
    try:
        with warnings.catch_warnings():
            # Pillow warns (and past twice its limit, raises) about huge headers: ours is the stricter limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageRejected("not a PNG, JPEG or WebP image") from None
    except Image.DecompressionBombError:
        raise ImageRejected(f"the image has more than {max_pixels} pixels") from None
    except (OSError, ValueError, SyntaxError, EOFError):  # a header Pillow recognised, then could not read
        raise ImageRejected("the image's header is corrupt") from None
    width, height = image.size
    if width < 1 or height < 1 or width * height > max_pixels:
        raise ImageRejected(f"the image has {width}x{height} pixels; at most {max_pixels} are accepted")
    return image


def inspect(
    data: bytes, *, max_bytes: int = limits.UPLOAD_MAX_BYTES, max_pixels: int = limits.UPLOAD_MAX_PIXELS
) -> ImageHeader:
    """Check an input image from its header alone (format, bytes, pixels): cheap whatever its size, for a caller
    that stores it as sent and leaves decoding to a worker (``normalise`` there)."""
    image = _open(data, max_bytes, max_pixels)
    return ImageHeader(str(image.format), image.width, image.height)


def normalise(
    data: bytes, *, max_bytes: int = limits.UPLOAD_MAX_BYTES, max_pixels: int = limits.UPLOAD_MAX_PIXELS,
    find_face: bool = False,
) -> NormalisedImage:
    """Validate and re-encode an input image as an RGB PNG without metadata (and, with ``find_face``, look for the
    face in it: a subject's photo)."""
    image = _open(data, max_bytes, max_pixels)
    try:
        image.load()
        rgb = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise ImageRejected("the image is truncated or corrupt") from None
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=1)
    png = buffer.getvalue()
    face = faces.detect(rgb) if find_face else None
    return NormalisedImage(png=png, sha256=hashlib.sha256(png).hexdigest(), width=rgb.width, height=rgb.height,
                           face=face)
