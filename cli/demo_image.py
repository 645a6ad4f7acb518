"""A reference "photo" for the demo, drawn with Pillow (no binary files in the repository, no personal data)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw


def write_demo_face(path: Path, size: int = 256) -> Path:
    image = Image.new("RGB", (size, size), (214, 226, 236))
    draw = ImageDraw.Draw(image)
    s = size / 256
    draw.ellipse((48 * s, 20 * s, 208 * s, 150 * s), fill=(200, 200, 205))  # grey hair
    draw.ellipse((68 * s, 40 * s, 188 * s, 190 * s), fill=(236, 196, 164))  # face
    for x in (98, 158):
        draw.ellipse(((x - 10) * s, 95 * s, (x + 10) * s, 110 * s), fill=(60, 50, 45))  # eyes
        draw.ellipse(((x - 18) * s, 88 * s, (x + 18) * s, 116 * s), outline=(90, 70, 60), width=max(1, round(2 * s)))
    draw.arc((100 * s, 130 * s, 156 * s, 165 * s), 20, 160, fill=(150, 70, 70), width=max(1, round(3 * s)))
    draw.rectangle((40 * s, 200 * s, 216 * s, 256 * s), fill=(120, 60, 90))  # cardigan
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path
