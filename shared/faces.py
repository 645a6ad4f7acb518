"""Faces in subject photos: found once per photo, cropped for the identity adapter.

The identity adapter (IP-Adapter plus-face) was trained on cropped faces, and the CLIP feature extractor resizes a
photo's short side to 224 and centre-crops it: in a full-body or off-centre photo the face would be a few pixels.
So each subject photo goes through a face detector once (a stored subject at upload and on each new version, a URL
reference in the preparation step), the box is stored with the subject version, and the GPU worker crops the face
with a margin (``crop_box``) before encoding it.

**The detector**: OpenCV's Haar cascade ``haarcascade_frontalface_default.xml``, which the
``opencv-python-headless`` 4.x wheels ship in ``cv2/data/`` (Apache-2.0 / BSD licensed, no download, no torch, the
same code in the API, the preparation step, the ``tiny`` profile and ``sdxl``). It finds frontal and near-frontal
faces, which is what a reference photo of a person is. Not chosen: YuNet (``FaceDetectorYN``: better on profiles,
but its ONNX file must be downloaded), ``facenet-pytorch`` (pins torch < 2.3 and numpy < 2), ``face-detection-
tflite`` (needs all of TensorFlow), mediapipe (1.x wheels ship no models), insightface (non-commercial model packs).

**Bounded cost.** The API runs detection synchronously at upload, so the detector sees a grey copy at most
``ANALYSIS_SIDE`` pixels long (a 25-megapixel upload costs about as much as a 1-megapixel one; ``bench/people.py``)
on one OpenCV thread (about 0.1-0.2 s of CPU). The smallest face found is ``MIN_FACE_PX`` of ``ANALYSIS_SIDE``
(1/16 of the photo's longest side; a face in a full-length portrait is about 1/8).

**Versions.** ``detector_version()`` names the cascade and the OpenCV release, and ``CROP_VERSION`` the crop rule: a
reference embedding is cached under both (``crop_tag``), so a changed detector or margin never serves a stale one.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import PIL.Image

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in fractions of the photo's width and height

CASCADE: Final = "haarcascade_frontalface_default.xml"
ANALYSIS_SIDE: Final = 512
# The smallest face looked for, at the analysis size: 1/16 of its longest side. Smaller faces (a person far off in a
# landscape photo) would be upscaled mush for the encoder, and the finest pyramid levels cost the most: the cascade's
# own window (24) takes about 1.4 times the CPU.
MIN_FACE_PX: Final = 32
SCALE_FACTOR: Final = 1.1  # the detector's pyramid step: finer steps cost more and place the box better
MIN_NEIGHBORS: Final = 5  # overlapping hits a face needs: fewer gives false faces in textures
# The cascade's confidence (its last stage's sum) a face needs: faces in photos score about 4 to 8, while the false
# faces it finds in hair, fabric and textures mostly score under 2 (and one larger than the real face would be taken
# as "the largest").
MIN_FACE_WEIGHT: Final = 2.0
BOX_DECIMALS: Final = 4  # 1/10,000 of a side: under a pixel on any photo we accept
# The cascade's box is tight (brows to mouth, cheek to cheek); plus-face was conditioned on faces with the whole head
# (hair, ears, chin) in frame. 0.4 of the box on each side gives a square crop 1.8 times the box: the whole head,
# little of the shoulders.
CROP_MARGIN: Final = 0.4
CROP_VERSION: Final = 1  # bump when ``crop_box`` changes: cached embeddings of crops then miss

_local = threading.local()  # OpenCV's CascadeClassifier is not safe to share between threads


def _cv2() -> Any:
    import cv2  # imported when first needed: the API and workers that never see a photo do not load it

    return cv2


def detector_version() -> str:
    """What a stored box was found with: the cascade and the OpenCV release that ran it."""
    return f"opencv-haar-frontalface@{_cv2().__version__}"


def _cascade() -> Any:
    cascade = getattr(_local, "cascade", None)
    if cascade is None:
        cv2 = _cv2()
        cv2.setNumThreads(1)  # one core per upload: the API's other requests keep theirs
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE)
        if cascade.empty():
            raise RuntimeError(f"OpenCV's {CASCADE} cannot be loaded (an opencv-python-headless 4.x wheel ships it)")
        _local.cascade = cascade
    return cascade


@dataclass(frozen=True)
class FaceDetection:
    """What the detector found in one photo: the largest face's box (None: no face) and how many faces."""

    box: Box | None
    count: int
    detector: str

    @property
    def warnings(self) -> list[str]:
        return face_warnings(self.count)


def as_box(values: Sequence[float] | None) -> Box | None:
    """A stored box (a JSON list) as a tuple."""
    if values is None:
        return None
    x0, y0, x1, y1 = values
    return (float(x0), float(y0), float(x1), float(y1))


def face_warnings(count: int | None) -> list[str]:
    """What a subject's answer (and a job using it) says about its photo's faces; nothing when not checked."""
    if count == 0:
        return ["no face found in the photo: the identity adapter sees the whole photo"]
    if count is not None and count > 1:
        return [f"{count} faces found in the photo: the largest is used"]
    return []


def analysis_copy(image: PIL.Image.Image) -> PIL.Image.Image:
    """The grey copy the detector sees: at most ``ANALYSIS_SIDE`` on its longest side (never enlarged)."""
    grey = image.convert("L")
    scale = ANALYSIS_SIDE / max(grey.size)
    if scale >= 1:
        return grey
    size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
    return grey.resize(size, PIL.Image.Resampling.BILINEAR, reducing_gap=2.0)


def detect(image: PIL.Image.Image) -> FaceDetection:
    """Find faces in ``image`` (any mode); the box of the largest one, in fractions of the photo."""
    import numpy as np

    cv2 = _cv2()
    grey = analysis_copy(image)
    pixels = cv2.equalizeHist(np.asarray(grey, dtype=np.uint8))
    found, _levels, weights = _cascade().detectMultiScale3(
        pixels, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(MIN_FACE_PX, MIN_FACE_PX),
        outputRejectLevels=True,
    )
    faces = [tuple(int(v) for v in face) for face, weight in zip(found, weights, strict=True)
             if float(weight) >= MIN_FACE_WEIGHT]
    if not faces:
        return FaceDetection(None, 0, detector_version())
    x, y, w, h = max(faces, key=lambda face: (face[2] * face[3], -face[0], -face[1]))
    box = (x / grey.width, y / grey.height, (x + w) / grey.width, (y + h) / grey.height)
    rounded = tuple(round(min(1.0, max(0.0, v)), BOX_DECIMALS) for v in box)
    return FaceDetection((rounded[0], rounded[1], rounded[2], rounded[3]), len(faces), detector_version())


def crop_box(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """The square crop around a face box (fractions) in a ``width`` x ``height`` photo, in pixels: the box's
    longer side plus ``CROP_MARGIN`` of it on each side, centred on the face, moved inside the photo, and clipped to
    it only when the photo is narrower than the square."""
    x0, y0, x1, y1 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
    side = max(x1 - x0, y1 - y0) * (1 + 2 * CROP_MARGIN)
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2

    def span(centre: float, limit: int) -> tuple[int, int]:
        length = min(limit, max(1, round(side)))
        start = min(max(0, round(centre - length / 2)), limit - length)
        return start, start + length

    left, right = span(centre_x, width)
    top, bottom = span(centre_y, height)
    return left, top, right, bottom


def crop(image: PIL.Image.Image, box: Box | None) -> PIL.Image.Image:
    """What the identity adapter sees of a photo: the face crop, or the whole photo when no face was found."""
    if box is None:
        return image
    return image.crop(crop_box(box, image.width, image.height))


def crop_tag(box: Box | None, detector: str | None) -> str | None:
    """A short name of the crop for cache keys, which with the image's sha256 determines the pixels the encoder sees
    (None: the whole photo, which needs none): the crop rule's version, the detector and the box."""
    if box is None:
        return None
    text = f"crop{CROP_VERSION}|{detector or ''}|" + ",".join(f"{v:.{BOX_DECIMALS}f}" for v in box)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
