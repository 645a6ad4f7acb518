"""Image files for upload tests: encoded with Pillow, or a bare PNG whose header claims a size its data lacks."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

from PIL import Image


def encoded(image: Image.Image, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_header(width: int, height: int, *, bit_depth: int = 1, color_type: int = 0) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (1-bit grey unless told) over a few junk bytes of pixel data:
    an image checked from its header passes or fails on its size; one that is decoded fails as corrupt."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"junk") + chunk(b"IEND", b"")
