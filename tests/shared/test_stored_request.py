"""The stored request (``shared.stored_request``): rows as the API has always written them read, and write back
unchanged; keys this version does not know survive a rewrite; a row that is not a request still reads as an
outline."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from shared.stored_request import RequestOutline, StoredRef, StoredRequest, UrlRef
from shared.styles import StyleRef

# A row as the API wrote it before the stored request was typed (``api/submit.py`` at 4c30ba8): a batch's second
# request with a stored subject, a subject by URL, a stored style reference, a LoRA and a memory context.
ROW: dict[str, Any] = {
    "user_id": "u-1",
    "prompt": "grandma teaching me to ride a bike",
    "negative_prompt": "blurry",
    "subjects": [{"subject_id": "s-1", "name": None, "image_url": None},
                 {"subject_id": None, "name": "dad", "image_url": "https://photos.example/dad.png"}],
    "style": {"artistic_style": "watercolor", "color_palette": "warm sepia", "mood": None,
              "reference": {"subject_id": "s-1", "image_url": None}},
    "memory_context": {"title": "Summer of '65", "content": "We rode along the river.", "date": "1965-07-14"},
    "params": {"width": 1024, "height": 768, "steps": 30, "guidance_scale": 7.5, "seed": 42, "num_images": 2,
               "identity_scale": 0.6, "style_scale": 0.8, "content_scale": 1.0, "style_lora": "ink",
               "lora_scale": 0.7, "output_format": "webp"},
    "priority": "batch",
    "on_subject_error": "text_only",
    "resolved": {
        "identity": [{"subject_id": "s-1", "name": "grandma", "version": 3, "storage_key": "subjects/s-1/v3.png",
                      "sha256": "a" * 64},
                     {"index": 1, "name": "dad", "image_url": "https://photos.example/dad.png"}],
        "style": {"subject_id": "s-1", "name": "grandma", "version": 3, "storage_key": "subjects/s-1/v3.png",
                  "sha256": "a" * 64},
        "style_lora": {"name": "ink", "version": 2},
    },
    "variant": "b",
    "experiment": "fewer-steps",
    "batch_index": 1,
}

# The first release's shape: no A/B variant, no LoRA in ``resolved``, no optional labels.
FIRST_RELEASE: dict[str, Any] = {
    "user_id": "u-1", "prompt": "a lighthouse", "negative_prompt": None, "subjects": [], "style": None,
    "memory_context": None,
    "params": {"width": 64, "height": 64, "steps": 2, "guidance_scale": 7.5, "seed": 1, "num_images": 1,
               "identity_scale": 0.6, "style_scale": 0.8, "content_scale": 1.0, "style_lora": None,
               "lora_scale": 0.8, "output_format": "png"},
    "priority": "interactive", "on_subject_error": "fail",
    "resolved": {"identity": [], "style": None},
}


@pytest.fixture
def stored() -> StoredRequest:
    return StoredRequest.model_validate(ROW)


def test_a_row_written_before_writes_back_unchanged(stored: StoredRequest) -> None:
    assert stored.model_dump(mode="json") == ROW


def test_a_stored_subject_reads_as_a_stored_reference(stored: StoredRequest) -> None:
    assert stored.resolved.identity[0] == StoredRef(subject_id="s-1", name="grandma", version=3,
                                                    storage_key="subjects/s-1/v3.png", sha256="a" * 64)


def test_a_photo_by_url_reads_as_a_url_reference(stored: StoredRequest) -> None:
    assert stored.resolved.identity[1] == UrlRef(index=1, name="dad", image_url="https://photos.example/dad.png")


def test_a_request_with_a_url_still_needs_fetching(stored: StoredRequest) -> None:
    assert stored.resolved.needs_fetching()


def test_the_style_reference_reads_as_a_stored_reference(stored: StoredRequest) -> None:
    assert isinstance(stored.resolved.style, StoredRef)
    assert stored.resolved.style.version == 3


def test_the_lora_reads_as_a_style_ref(stored: StoredRequest) -> None:
    assert stored.resolved.style_lora == StyleRef("ink", 2)


def test_the_memory_context_is_kept_as_given(stored: StoredRequest) -> None:
    assert stored.memory_context == {"title": "Summer of '65", "content": "We rode along the river.",
                                     "date": "1965-07-14"}


def test_the_params_read_as_stored(stored: StoredRequest) -> None:
    params = stored.params
    assert params.width == 1024
    assert params.height == 768
    assert params.num_images == 2
    assert params.lora_scale == 0.7
    assert params.output_format == "webp"


def test_the_labels_read_as_stored(stored: StoredRequest) -> None:
    assert stored.variant == "b"
    assert stored.experiment == "fewer-steps"
    assert stored.batch_index == 1
    assert stored.retry_of is None


def test_a_first_release_row_reads_with_the_defaults_of_what_came_later() -> None:
    old = StoredRequest.model_validate(FIRST_RELEASE)
    assert old.variant_or_control == "a"
    assert old.resolved.style_lora is None
    assert old.experiment is None


def test_a_first_release_row_writes_back_only_the_later_keys_with_their_defaults() -> None:
    written = StoredRequest.model_validate(FIRST_RELEASE).model_dump(mode="json")
    resolved = {**FIRST_RELEASE["resolved"], "style_lora": None}
    assert written == {**FIRST_RELEASE, "resolved": resolved, "variant": None}


def test_keys_this_version_does_not_know_survive_a_rewrite(stored: StoredRequest) -> None:
    newer = copy.deepcopy(ROW)
    newer["layout"] = [{"subject_id": "s-1", "region": [0.0, 0.0, 0.5, 1.0]}]
    newer["params"]["quality"] = "draft"
    request = StoredRequest.model_validate(newer)
    rewritten = request.model_copy(update={"resolved": request.resolved.model_copy(update={"identity": []})})
    written = rewritten.model_dump(mode="json")
    assert (written["layout"], written["params"]["quality"]) == (newer["layout"], "draft")


def test_a_row_without_its_parameters_is_not_a_request() -> None:
    with pytest.raises(ValidationError):
        StoredRequest.model_validate({"prompt": "p", "params": {"steps": 2}})


def test_a_row_without_its_parameters_still_reads_as_an_outline() -> None:
    outline = RequestOutline.model_validate({"prompt": "p", "params": {"steps": 2}, "variant": "b"})
    assert outline.variant_or_control == "b"


def test_the_outline_writes_back_the_whole_row_with_a_label_added() -> None:
    outline = RequestOutline.model_validate(ROW).model_copy(update={"retry_of": "job-1"})
    assert outline.model_dump(mode="json") == {**ROW, "retry_of": "job-1"}


def test_a_style_reference_fetched_by_the_preparation_step_keeps_its_two_keys() -> None:
    fetched = StoredRef(storage_key="jobs/j-1/references/style.png", sha256="c" * 64)
    assert fetched.model_dump(mode="json") == {"storage_key": "jobs/j-1/references/style.png", "sha256": "c" * 64}
