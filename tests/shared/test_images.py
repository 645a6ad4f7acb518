"""Images coming in: format allowlist, limits before decoding, orientation applied, metadata stripped."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from shared.images import ImageRejected, normalise


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_become_rgb_png(fmt: str) -> None:
    result = normalise(encode(Image.new("RGB", (40, 30), (10, 200, 30)), fmt))
    decoded = Image.open(io.BytesIO(result.png))
    assert decoded.format == "PNG"
    assert decoded.mode == "RGB"
    assert decoded.size == (40, 30)
    assert (result.width, result.height) == (40, 30)
    assert len(result.sha256) == 64


def test_same_pixels_same_hash_whatever_the_container() -> None:
    image = Image.new("RGB", (16, 16), (1, 2, 3))
    assert normalise(encode(image, "PNG")).sha256 == normalise(encode(image, "WEBP", lossless=True)).sha256


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"just some text pretending to be a png", "not a PNG, JPEG or WebP"),
        (encode(Image.new("RGB", (8, 8)), "GIF"), "not a PNG, JPEG or WebP"),
        (encode(Image.new("RGB", (8, 8)), "BMP"), "not a PNG, JPEG or WebP"),
        (encode(Image.new("RGB", (64, 64), "red"), "PNG")[:80], "truncated or corrupt"),
    ],
)
def test_bad_images_are_rejected_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(ImageRejected, match=message):
        normalise(data)


def test_byte_limit_is_checked_first() -> None:
    data = encode(Image.new("RGB", (64, 64)), "PNG")
    with pytest.raises(ImageRejected, match="larger than"):
        normalise(data, max_bytes=len(data) - 1)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size; its pixel data would never fit in memory (a decompression bomb)."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(
        b"IEND", b"")


def test_pixel_limit_is_checked_before_decoding() -> None:
    with pytest.raises(ImageRejected, match="pixels"):
        normalise(_png_header_only(60_000, 60_000))  # 3.6 gigapixels announced in 60 bytes
    with pytest.raises(ImageRejected, match="pixels"):
        normalise(encode(Image.new("RGB", (100, 100)), "PNG"), max_pixels=9_999)


def test_exif_orientation_is_applied_and_metadata_dropped() -> None:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 10, 20))  # blue stripe on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    exif[0x010F] = "PhoneMaker"
    result = normalise(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    decoded = Image.open(io.BytesIO(result.png))
    assert decoded.size == (20, 40)
    top = decoded.getpixel((10, 2))
    assert isinstance(top, tuple)
    assert top[2] > 200
    assert top[0] < 60  # the left stripe is now on top
    assert not decoded.getexif()
    assert "exif" not in decoded.info


def test_png_text_chunks_are_stripped() -> None:
    info = PngInfo()
    info.add_text("Description", "my grandmother at the lake, 1965")
    result = normalise(encode(Image.new("RGB", (8, 8)), "PNG", pnginfo=info))
    assert b"grandmother" not in result.png
    assert not getattr(Image.open(io.BytesIO(result.png)), "text", {})
