"""The result-cache key and the stored request, with people: face crops and regions count; the layout echo."""

from __future__ import annotations

import copy
from typing import Any

from shared import cache, regions
from shared.stored_request import StoredRequest
from shared.views import layout_out

DETECTOR = "opencv-haar-frontalface@4.14.0"


def person(letter: str, **fields: Any) -> dict[str, Any]:
    return {"subject_id": f"s-{letter}", "name": letter, "version": 1, "storage_key": f"subjects/s-{letter}/v1.png",
            "sha256": letter * 64, "face": [0.3, 0.1, 0.5, 0.3], "face_count": 1, "detector": DETECTOR, **fields}


def request(*people: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": "p", "negative_prompt": None,
            "params": {"width": 64, "height": 64, "steps": 2, "guidance_scale": 7.5, "seed": 1, "num_images": 1,
                       "identity_scale": 0.6, "style_scale": 0.8, "content_scale": 0.0},
            "resolved": {"identity": list(people)}}


def key(document: dict[str, Any]) -> str:
    return cache.compute_key("c", "tiny", StoredRequest.model_validate(document), "p", None)


def test_the_key_counts_each_face_crop() -> None:
    base = key(request(person("a"), person("b")))
    other_box = request(person("a", face=[0.31, 0.1, 0.5, 0.3]), person("b"))
    other_detector = request(person("a", detector="opencv-haar-frontalface@4.15.0"), person("b"))
    whole_photo = request(person("a", face=None, face_count=0), person("b"))
    assert len({base, key(other_box), key(other_detector), key(whole_photo)}) == 4


def test_the_key_counts_the_regions_used() -> None:
    two = request(person("a"), person("b"))
    as_columns = request(person("a", region=[0.0, 0.0, 0.5, 1.0]), person("b", region=[0.5, 0.0, 1.0, 1.0]))
    swapped = request(person("a", region=[0.5, 0.0, 1.0, 1.0]), person("b", region=[0.0, 0.0, 0.5, 1.0]))
    assert key(two) == key(as_columns)  # no regions: the same columns, the same picture
    assert key(swapped) != key(two)
    assert key(request(person("b"), person("a"))) != key(two)  # the order places the people


def test_a_photo_whose_face_was_not_looked_for_needs_preparing() -> None:
    legacy = {k: v for k, v in person("a").items() if k not in ("face", "face_count", "detector")}
    assert StoredRequest.model_validate(request(legacy)).resolved.needs_preparing()
    assert not StoredRequest.model_validate(request(person("a"))).resolved.needs_preparing()


def test_a_stored_request_without_people_fields_reads_as_before() -> None:
    document = request({"storage_key": "subjects/x/v1.png", "sha256": "x" * 64})
    stored = StoredRequest.model_validate(copy.deepcopy(document))
    assert stored.model_dump(mode="json")["resolved"]["identity"] == document["resolved"]["identity"]
    assert stored.resolved.given_regions() == [None]


def test_the_layout_echo() -> None:
    document = request(person("a"), person("b", face=None, face_count=0))
    assert [entry.model_dump() for entry in layout_out(document)] == [
        {"subject_id": "s-a", "name": "a", "region": [0.0, 0.0, 0.5, 1.0], "face_found": True},
        {"subject_id": "s-b", "name": "b", "region": [0.5, 0.0, 1.0, 1.0], "face_found": False},
    ]
    assert layout_out({"not": "a request"}) == []
    assert regions.columns(3)[1] == (1 / 3, 0.0, 2 / 3, 1.0)
