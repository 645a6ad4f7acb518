"""Photos for the tests of faces and people: scikit-image's public-domain photographs, read from its wheel (a dev
dependency; nothing is downloaded). ``astronaut.png`` (Eileen Collins, NASA) has one face, ``coffee.png`` none."""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path

import numpy as np
import PIL.Image


def _data(name: str) -> PIL.Image.Image:
    spec = importlib.util.find_spec("skimage")
    assert spec is not None and spec.submodule_search_locations, "scikit-image (a dev dependency) is not installed"
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    with PIL.Image.open(path) as image:
        return image.convert("RGB")


def astronaut() -> PIL.Image.Image:
    """512x512, one face (about x 0.35..0.53, y 0.13..0.31 of the photo)."""
    return _data("astronaut.png")


def coffee() -> PIL.Image.Image:
    """600x400, a cup of coffee: no face."""
    return _data("coffee.png")


def two_faces() -> PIL.Image.Image:
    """The astronaut twice on one 832x512 canvas: full size on the left, 320x320 at the bottom right (two faces, the
    larger on the left)."""
    canvas = PIL.Image.new("RGB", (832, 512), (128, 128, 128))
    canvas.paste(astronaut(), (0, 0))
    canvas.paste(astronaut().resize((320, 320)), (512, 192))
    return canvas


def noise(seed: int, size: tuple[int, int] = (40, 48)) -> PIL.Image.Image:
    """Random pixels (no face), ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def png(image: PIL.Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg(image: PIL.Image.Image) -> bytes:
    """A small upload (a multipart body under the test client's 500 KB spooling threshold)."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()
