"""People through the API: the face found at upload, regions validated and echoed as the job's layout, the prompt
naming the people in layout order, AutoBio's subjectReferences as columns, ``content_scale`` 0 by default."""

from __future__ import annotations

import io
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from shared import limits
from shared.db import Database
from shared.models import Job
from shared.settings import Settings
from tests.faces import astronaut, coffee, jpeg, two_faces
from tests.helpers import make_key

EYES_AND_MOUTH = ((0.40, 0.20), (0.48, 0.20), (0.44, 0.28))  # the astronaut's, in fractions of her photo
NO_FACE = "no face found in the photo: the identity adapter sees the whole photo"


def upload(client: FlaskClient, auth: dict[str, str], name: str, data: bytes, user_id: str = "u-1") -> Any:
    response = client.post("/v1/subjects", headers=auth,
                           data={"user_id": user_id, "name": name, "image": (io.BytesIO(data), "p.png")})
    assert response.status_code in (200, 201), response.json
    return response.json


def submit(client: FlaskClient, auth: dict[str, str], subjects: list[dict[str, Any]], **extra: Any) -> Any:
    body = {"user_id": "u-1", "prompt": "a day at the beach", "subjects": subjects,
            "params": {"width": 64, "height": 64}, **extra}
    return client.post("/v1/illustrations", headers=auth, json=body)


def jobs_written(db: Database) -> int:
    with db.begin() as session:
        return int(session.execute(select(func.count()).select_from(Job)).scalar_one())


# --- faces at upload ----------------------------------------------------------------------------------------------
def test_an_upload_answers_the_face_box_and_keeps_it(client: FlaskClient, auth: dict[str, str]) -> None:
    created = upload(client, auth, "grandma", jpeg(astronaut()))
    box = created["face"]["box"]
    assert all(box[0] <= x <= box[2] and box[1] <= y <= box[3] for x, y in EYES_AND_MOUTH)
    assert created["warnings"] == []
    fetched = client.get(f"/v1/subjects/{created['id']}", headers=auth)
    assert fetched.json == created


def test_a_photo_without_a_face_has_face_null_and_a_warning(client: FlaskClient, auth: dict[str, str]) -> None:
    created = upload(client, auth, "cup", jpeg(coffee()))
    assert created["face"] is None
    assert created["warnings"] == [NO_FACE]
    listed = client.get("/v1/subjects?user_id=u-1", headers=auth).json
    assert listed["items"][0]["warnings"] == [NO_FACE]  # type: ignore[index]


def test_a_new_photo_under_the_name_gets_its_own_box(client: FlaskClient, auth: dict[str, str]) -> None:
    first = upload(client, auth, "mum", jpeg(astronaut()))
    second = upload(client, auth, "mum", jpeg(two_faces()))
    assert second["version"] == 2
    assert second["face"]["box"] != first["face"]["box"]
    assert second["face"]["box"][2] < 512 / 832  # the larger face: the full-size astronaut on the left
    assert second["warnings"] == ["2 faces found in the photo: the largest is used"]


# --- regions --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("regions", "field"), [
    pytest.param([[0.5, 0.0, 0.2, 1.0], [0.5, 0.0, 1.0, 1.0]], "subjects.0.region", id="reversed"),
    pytest.param([[0.0, 0.0, 0.5, 1.0], [0.5, 0.5, 0.7, 0.8]], "subjects.1.region", id="under-a-sixteenth"),
    pytest.param([[-0.1, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]], "subjects.0.region", id="below-zero"),
    pytest.param([[0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.2, 1.0]], "subjects.1.region", id="above-one"),
    pytest.param([[0.0, 0.0, 0.5], [0.5, 0.0, 1.0, 1.0]], "subjects.0.region", id="three-numbers"),
    pytest.param([[0.0, 0.0, 0.5, 1.0], None], "subjects.1.region", id="some-but-not-all"),
])
def test_a_bad_region_is_422_naming_it_and_writes_nothing(client: FlaskClient, auth: dict[str, str], db: Database,
                                                         regions: list[Any], field: str) -> None:
    upload(client, auth, "grandma", jpeg(astronaut()))
    upload(client, auth, "dad", jpeg(coffee()))
    subjects = [{"name": name, **({"region": region} if region is not None else {})}
                for name, region in zip(("grandma", "dad"), regions, strict=True)]
    before = jobs_written(db)
    response = submit(client, auth, subjects)
    assert response.status_code == 422, response.json
    assert [error["field"] for error in response.json["errors"]] == [field]  # type: ignore[index]
    assert jobs_written(db) == before


def test_a_region_of_exactly_a_sixteenth_is_accepted(client: FlaskClient, auth: dict[str, str]) -> None:
    upload(client, auth, "grandma", jpeg(astronaut()))
    response = submit(client, auth, [{"name": "grandma", "region": [0.5, 0.5, 0.75, 0.75]}])
    assert response.status_code == 202, response.json
    assert response.json["layout"][0]["region"] == [0.5, 0.5, 0.75, 0.75]  # type: ignore[index]


def test_a_bad_region_in_a_batch_names_the_request(client: FlaskClient, auth: dict[str, str]) -> None:
    upload(client, auth, "grandma", jpeg(astronaut()))
    good = {"user_id": "u-1", "prompt": "p", "subjects": [{"name": "grandma"}]}
    bad = {"user_id": "u-1", "prompt": "p", "subjects": [{"name": "grandma", "region": [0.9, 0.0, 0.1, 1.0]}]}
    response = client.post("/v1/batches", headers=auth, json={"requests": [good, bad]})
    assert response.status_code == 422
    assert [error["field"] for error in response.json["errors"]] == ["requests.1.subjects.0.region"]  # type: ignore[index]


# --- the layout, the warnings and the prompt -------------------------------------------------------------------------
def test_the_job_echoes_the_regions_and_the_faces(client: FlaskClient, auth: dict[str, str]) -> None:
    grandma = upload(client, auth, "grandma", jpeg(astronaut()))
    dad = upload(client, auth, "dad", jpeg(coffee()))
    response = submit(client, auth, [{"subject_id": grandma["id"], "region": [0.5, 0.0, 1.0, 1.0]},
                                     {"name": "dad", "region": [0.0, 0.2, 0.5, 1.0]}])
    assert response.status_code == 202, response.json
    job: Any = response.json
    assert job["layout"] == [
        {"subject_id": grandma["id"], "name": "grandma", "region": [0.5, 0.0, 1.0, 1.0], "face_found": True},
        {"subject_id": dad["id"], "name": "dad", "region": [0.0, 0.2, 0.5, 1.0], "face_found": False},
    ]
    assert f"subjects.1: {NO_FACE}" in job["warnings"]
    # The people in layout order, left to right: dad's region is the left one.
    assert job["prompt_used"] == "a day at the beach, dad on the left, grandma on the right"
    assert client.get(f"/v1/illustrations/{job['id']}", headers=auth).json["layout"] == job["layout"]  # type: ignore[index]


def test_without_regions_the_people_get_columns_in_the_order_given(client: FlaskClient, auth: dict[str, str]) -> None:
    for name in ("ann", "ben", "cat"):
        upload(client, auth, name, jpeg(astronaut()))
    job: Any = submit(client, auth, [{"name": "ann"}, {"name": "ben"}, {"name": "cat"},
                                     {"name": "dan", "image_url": "https://photos.example/dan.jpg"}]).json
    thirds = [[0.0, 0.0, 0.25, 1.0], [0.25, 0.0, 0.5, 1.0], [0.5, 0.0, 0.75, 1.0], [0.75, 0.0, 1.0, 1.0]]
    assert [person["region"] for person in job["layout"]] == thirds
    assert [person["name"] for person in job["layout"]] == ["ann", "ben", "cat", "dan"]
    # A photo by URL is fetched (and looked at) by the preparation step: not known yet.
    assert job["layout"][3] == {"subject_id": None, "name": "dan", "region": [0.75, 0.0, 1.0, 1.0],
                                "face_found": None}
    assert job["prompt_used"] == ("a day at the beach, ann on the far left, ben left of centre, cat right of centre, "
                                  "dan on the far right")


def test_one_person_without_a_region_has_the_whole_picture_and_the_prompt_as_before(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    upload(client, auth, "grandma", jpeg(astronaut()))
    job: Any = submit(client, auth, [{"name": "grandma"}]).json
    assert [person["region"] for person in job["layout"]] == [[0.0, 0.0, 1.0, 1.0]]
    assert job["prompt_used"] == "a day at the beach"
    assert submit(client, auth, []).json["layout"] == []  # type: ignore[index]


def test_the_people_are_left_out_of_a_prompt_that_has_no_room(client: FlaskClient, auth: dict[str, str]) -> None:
    for name in ("ann", "ben"):
        upload(client, auth, name, jpeg(astronaut()))
    long_prompt = " ".join(["sand"] * 70)
    job: Any = submit(client, auth, [{"name": "ann"}, {"name": "ben"}], prompt=long_prompt).json
    assert "ann" not in job["prompt_used"]
    assert any(warning.startswith("prompt: left out to fit") and "subjects" in warning
               for warning in job["warnings"])


# --- AutoBio's route and the defaults -------------------------------------------------------------------------------
def test_autobio_subject_references_become_columns_in_order(settings: Settings) -> None:
    from api import create_app

    app: Flask = create_app(settings.model_copy(update={"compat_wait_s": 0.1}))
    try:
        client = app.test_client()
        db: Database = app.extensions["illustrations"].db
        auth = {"Authorization": f"Bearer {make_key(db)}"}
        upload(client, auth, "grandma", jpeg(astronaut()), user_id="autobio-1")
        upload(client, auth, "dad", jpeg(coffee()), user_id="autobio-1")
        response = client.post("/api/illustrations/generate", headers=auth, json={
            "prompt": "at the beach", "userId": "autobio-1",
            "subjectReferences": [{"name": "dad"}, {"name": "grandma"}]})
        assert response.status_code == 202, response.json
        job: Any = client.get(f"/v1/illustrations/{response.json['generationId']}", headers=auth).json  # type: ignore[index]
        assert [(person["name"], person["region"], person["face_found"]) for person in job["layout"]] == [
            ("dad", [0.0, 0.0, 0.5, 1.0], False), ("grandma", [0.5, 0.0, 1.0, 1.0], True)]
        assert job["prompt_used"] == "at the beach, dad on the left, grandma on the right"
    finally:
        app.extensions["illustrations"].waiter.close()
        app.extensions["illustrations"].db.engine.dispose()


def test_content_scale_defaults_to_zero(client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    assert limits.DEFAULT_CONTENT_SCALE == 0.0
    job: Any = submit(client, auth, []).json
    with db.begin() as session:
        stored = session.get_one(Job, job["id"]).request
    assert stored["params"]["content_scale"] == 0.0
    schema: Any = client.get("/openapi.json").json
    # A request field's default is said in its description (a `default` keyword would make generated clients
    # require the field: api/openapi.py).
    assert "Default: `0.0`." in schema["components"]["schemas"]["Params"]["properties"]["content_scale"]["description"]
