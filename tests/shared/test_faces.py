"""The face detector and crop (``shared.faces``) on real photographs: scikit-image's public-domain photos."""

from __future__ import annotations

import io

import PIL.Image
import pytest

from shared import faces
from shared.images import normalise
from tests.faces import astronaut, coffee, jpeg, noise, png, two_faces

# Landmarks of the astronaut's face, read off the photo (fractions of its 512x512): her eyes and her mouth.
EYES = ((0.40, 0.20), (0.48, 0.20))
MOUTH = (0.44, 0.28)


def inside(point: tuple[float, float], box: faces.Box) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def area(box: faces.Box) -> float:
    return (box[2] - box[0]) * (box[3] - box[1])


def test_the_astronaut_gets_a_box_around_her_face() -> None:
    found = faces.detect(astronaut())
    assert found.count == 1
    assert found.box is not None
    assert all(inside(point, found.box) for point in (*EYES, MOUTH))
    assert 0.01 < area(found.box) < 0.06  # her face, not her body or the photo
    assert found.warnings == []
    assert found.detector.startswith("opencv-haar-frontalface@4.")


def test_the_coffee_photo_has_no_face_and_a_warning() -> None:
    found = faces.detect(coffee())
    assert (found.box, found.count) == (None, 0)
    assert found.warnings == ["no face found in the photo: the identity adapter sees the whole photo"]
    assert faces.detect(noise(3, (64, 64))).box is None


def test_several_faces_give_the_largest_and_a_warning() -> None:
    found = faces.detect(two_faces())
    assert found.count == 2
    assert found.box is not None
    # The full-size astronaut fills the left 512 of the 832 pixels: her face is the larger one.
    assert found.box[2] < 512 / 832
    assert all(inside((x * 512 / 832, y), found.box) for x, y in (*EYES, MOUTH))
    assert found.warnings == ["2 faces found in the photo: the largest is used"]


def test_weak_false_faces_are_not_counted() -> None:
    """As JPEG, the two-face photo also gives the cascade a false face beside the big astronaut's, larger than her
    face but with a confidence under ``MIN_FACE_WEIGHT``: it is not counted, nor taken as the largest."""
    with PIL.Image.open(io.BytesIO(jpeg(two_faces()))) as decoded:
        found = faces.detect(decoded.convert("RGB"))
    assert found.count == 2
    assert found.box is not None and all(inside((x * 512 / 832, y), found.box) for x, y in (*EYES, MOUTH))


def test_a_large_photo_is_analysed_at_a_bounded_size() -> None:
    big = astronaut().resize((4096, 4096))
    assert max(faces.analysis_copy(big).size) == faces.ANALYSIS_SIDE
    assert faces.analysis_copy(coffee()).size == (faces.ANALYSIS_SIDE, 341)
    small = noise(1, (100, 60))
    assert faces.analysis_copy(small).size == (100, 60)  # never enlarged
    found = faces.detect(big)
    assert found.box is not None and all(inside(point, found.box) for point in (*EYES, MOUTH))


def test_the_crop_is_a_square_with_the_margin_inside_the_photo() -> None:
    box = (0.4, 0.4, 0.5, 0.5)  # 100 px in a 1000 x 1000 photo
    assert faces.crop_box(box, 1000, 1000) == (360, 360, 540, 540)  # 100 * (1 + 2 * 0.4) = 180, centred
    # Near an edge the square moves inside the photo rather than shrinking.
    assert faces.crop_box((0.0, 0.9, 0.1, 1.0), 1000, 1000) == (0, 820, 180, 1000)
    # A photo narrower than the square: clipped to the photo on that side only.
    assert faces.crop_box((0.2, 0.45, 0.8, 0.55), 100, 1000) == (0, 410, 100, 590)
    photo = astronaut()
    found = faces.detect(photo)
    cropped = faces.crop(photo, found.box)
    assert cropped.width == cropped.height
    assert cropped.width == pytest.approx(round(512 * (found.box[2] - found.box[0]) * 1.8), abs=2)  # type: ignore[index]
    assert faces.crop(photo, None) is photo  # no face: the whole photo


def test_the_crop_tag_names_the_crop_the_detector_and_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    box = (0.1, 0.2, 0.3, 0.4)
    tag = faces.crop_tag(box, "opencv-haar-frontalface@4.14.0")
    assert tag is not None and len(tag) == 16
    assert faces.crop_tag(box, "opencv-haar-frontalface@4.14.0") == tag
    assert faces.crop_tag((0.1, 0.2, 0.3, 0.41), "opencv-haar-frontalface@4.14.0") != tag
    assert faces.crop_tag(box, "opencv-haar-frontalface@4.15.0") != tag
    monkeypatch.setattr(faces, "CROP_VERSION", faces.CROP_VERSION + 1)
    assert faces.crop_tag(box, "opencv-haar-frontalface@4.14.0") != tag
    assert faces.crop_tag(None, "opencv-haar-frontalface@4.14.0") is None


def test_normalise_finds_the_face_only_when_asked() -> None:
    data = png(astronaut())
    assert normalise(data).face is None
    found = normalise(data, find_face=True).face
    assert found is not None and found == faces.detect(astronaut())
