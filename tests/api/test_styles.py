"""Styles through the API (Flask's test client, real PostgreSQL, Redis and storage; no worker: trainings stay queued
unless a test moves them): training requests by multipart and JSON, every validation error named, reading, cancel,
and user deletion of training pictures."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from shared import tasks, training
from shared.db import Database
from shared.deletion.run import run_deletion
from shared.models import StyleVersion
from shared.settings import Settings
from tests.helpers import (
    CAPTION_SECRET,
    make_key,
    style_form,
    style_version,
    succeeded_job,
    training_images,
    upload,
)

PARAMS = {"steps": 10, "rank": 4, "resolution": 64, "learning_rate": 0.001, "seed": 9}


@pytest.fixture
def auth(db: Database) -> dict[str, str]:
    """A key with the scopes styles need (and generate/admin, to make subjects, jobs and deletions)."""
    return {"Authorization": f"Bearer {make_key(db, scopes=('generate', 'styles', 'admin'))}"}


def train(client: FlaskClient, auth: dict[str, str], **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/styles", headers=auth, data=style_form(**fields))
    assert response.status_code == 202, response.json
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body


def versions(db: Database) -> int:
    with db.begin() as session:
        return int(session.execute(select(func.count()).select_from(StyleVersion)).scalar_one())


def prepare(app: Flask, db: Database, job_id: str) -> None:
    """The preparation step (the CPU worker's task, as plain code): the uploads normalised, the version handed to
    the training queue."""
    from worker.style_preparation import prepare_style

    svc = app.extensions["illustrations"]
    assert prepare_style(db, svc.storage, svc.fetcher, svc.publisher, job_id) == "prepared"


def test_multipart_training_is_queued_with_its_pictures_and_only_its_id_is_published(
        client: FlaskClient, auth: dict[str, str], app: Flask, db: Database, settings: Settings) -> None:
    broker = redis.Redis.from_url(settings.broker_url)
    broker.delete(tasks.QUEUE_PREPARE, tasks.QUEUE_TRAINING)
    response = client.post("/v1/styles", headers=auth, data=style_form(params=json.dumps(PARAMS), user_id="u-7"))
    assert response.status_code == 202, response.json
    body: Any = response.json
    assert body == {"name": "ink", "version": 1, "status": "queued", "job_id": body["job_id"],
                    "links": {"self": "http://localhost/v1/styles/ink"}}
    assert response.headers["Location"] == "/v1/styles/ink"
    messages = broker.lrange(tasks.QUEUE_PREPARE, 0, -1)  # uploads are normalised by the preparation step
    assert len(messages) == 1
    message = json.loads(messages[0])
    assert message["headers"]["task"] == tasks.PREPARE_STYLE
    assert json.loads(base64.b64decode(message["body"]))[0] == [body["job_id"]]
    assert CAPTION_SECRET.encode() not in messages[0]

    version = style_version(db, body["job_id"])
    assert version.status == "queued"
    assert version.source == "training"
    assert version.queue == tasks.QUEUE_PREPARE
    assert version.base_profile == "tiny"
    assert version.published_at is not None
    assert (version.rank, version.alpha) == (4, 4.0)
    assert version.params == {**PARAMS, "alpha": 4, "batch_size": 1}
    stored = training_images(db, body["job_id"])
    storage = app.extensions["illustrations"].storage
    assert [(p.index, p.source, p.user_id, p.caption) for p in stored] == [
        (i, "upload", "u-7", f"{CAPTION_SECRET} {i}") for i in range(4)]
    prepare(app, db, body["job_id"])
    assert style_version(db, body["job_id"]).queue == tasks.QUEUE_TRAINING
    (trained,) = broker.lrange(tasks.QUEUE_TRAINING, 0, -1)
    assert json.loads(trained)["headers"]["task"] == tasks.TRAIN
    for picture in training_images(db, body["job_id"]):
        assert picture.storage_key == training.image_key(version.style_id, 1, picture.index)
        assert storage.get(picture.storage_key).startswith(b"\x89PNG")
        assert picture.width == 40 + picture.index

    style: Any = client.get("/v1/styles/ink", headers=auth).json
    assert style["name"] == "ink"
    assert style["active_version"] is None
    assert style["links"] == {"self": "http://localhost/v1/styles/ink"}
    (out,) = style["versions"]
    assert out["version"] == 1
    assert out["status"] == "queued"
    assert out["progress"] == {"step": 0, "total": 10}
    assert out["loss"] is None
    assert out["error"] is None
    assert out["images"] == 4
    assert out["job_id"] == body["job_id"]
    assert out["attempts"] == 0
    assert out["params"]["seed"] == 9
    assert out["training_data_deleted_at"] is None

    # Defaults are filled in and recorded (the seed drawn), and a second training is the next version.
    second = train(client, auth)
    assert second["version"] == 2
    defaults = client.get("/v1/styles/ink", headers=auth).json["versions"][1]["params"]  # type: ignore[index]
    assert defaults["rank"] == 16
    assert defaults["alpha"] == 16
    assert defaults["steps"] == 1000
    assert defaults["resolution"] == 1024
    assert defaults["learning_rate"] == 1e-4
    assert isinstance(defaults["seed"], int)


def test_listing_pages_through_the_clients_styles_only(client: FlaskClient, auth: dict[str, str],
                                                     db: Database) -> None:
    for name in ("one", "two", "three"):
        train(client, auth, name=name)
    other = {"Authorization": f"Bearer {make_key(db, scopes=('styles',))}"}
    train(client, other, name="theirs")
    first: Any = client.get("/v1/styles?limit=2", headers=auth).json
    assert [s["name"] for s in first["items"]] == ["three", "two"]
    assert first["next_cursor"]
    rest: Any = client.get(f"/v1/styles?limit=2&cursor={first['next_cursor']}", headers=auth).json
    assert [s["name"] for s in rest["items"]] == ["one"]
    assert rest["next_cursor"] is None
    assert client.get("/v1/styles/theirs", headers=auth).status_code == 404
    assert client.get("/v1/styles?limit=0", headers=auth).status_code == 422


def test_json_training_names_subjects_illustrations_and_urls(client: FlaskClient, auth: dict[str, str], app: Flask,
                                                             db: Database, settings: Settings) -> None:
    broker = redis.Redis.from_url(settings.broker_url)
    broker.delete(tasks.QUEUE_PREPARE)
    subject = upload(client, auth, user_id="u-sub")
    job = succeeded_job(client, auth, app, db, "u-job", "blue")
    response = client.post("/v1/styles", headers=auth, json={
        "name": "sepia",
        "images": [{"subject_id": subject["id"]}, {"illustration_id": job["id"], "index": 0},
                   {"image_url": "https://photos.example/a.png"}, {"image_url": "https://photos.example/b.png"}],
        "captions": ["grandma", "a bike", "a lake", "a house"],
        "params": PARAMS,
        "user_id": "u-url",
    })
    assert response.status_code == 202, response.json
    body: Any = response.json
    version = style_version(db, body["job_id"])
    assert version.queue == tasks.QUEUE_PREPARE
    assert version.status == "queued"
    assert [(p.source, p.source_ref, p.user_id, p.storage_key) for p in training_images(db, body["job_id"])] == [
        ("subject", subject["id"], "u-sub", None), ("illustration", f"{job['id']}/0", "u-job", None),
        ("url", "https://photos.example/a.png", "u-url", None), ("url", "https://photos.example/b.png", "u-url", None)]
    (message,) = broker.lrange(tasks.QUEUE_PREPARE, 0, -1)
    assert json.loads(message)["headers"]["task"] == tasks.PREPARE_STYLE


def _problem(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.json
    assert response.mimetype == "application/problem+json"
    assert CAPTION_SECRET not in response.get_data(as_text=True)  # captions are never echoed
    return {item["field"]: item["message"] for item in response.json["errors"]}


def test_every_problem_is_a_named_422_and_nothing_is_written(client: FlaskClient, auth: dict[str, str], app: Flask,
                                                             db: Database) -> None:
    before = versions(db)
    subject = upload(client, auth)
    junk = style_form()
    junk["image"][2] = (io.BytesIO(b"not a picture"), "2.png")
    cases: list[tuple[dict[str, Any], str, str]] = [
        (style_form(count=3), "image", "give 4 to 200 pictures, got 3"),
        (style_form(captions=["a", "b", "c"]), "caption", "give one caption per image: 4 images, 3 captions"),
        (junk, "image.2", "not a PNG, JPEG or WebP image"),
        (style_form(params="{not json"), "params", "must be a JSON object"),
        (style_form(params=json.dumps({"rank": 0})), "params.rank", "greater than or equal to 1"),
        (style_form(params=json.dumps({"learning_rate": 1})), "params.learning_rate", "less than or equal to 0.01"),
        (style_form(params=json.dumps({"resolution": 100})), "params.resolution", "multiple of 8"),
        (style_form(params=json.dumps({"epochs": 3})), "params.epochs", "Extra inputs are not permitted"),
        (style_form(webhook_url="http://10.1.2.3/hooks"), "webhook_url", "private address"),
        (style_form(colour="red"), "colour", "Extra inputs are not permitted"),
        (style_form(name="-ink"), "name", "String should match pattern"),
        (style_form(name=["a", "b"]), "name", "give this field once"),
    ]
    for data, field, message in cases:
        problems = _problem(client.post("/v1/styles", headers=auth, data=data))
        assert field in problems, (field, problems)
        assert message in problems[field], (field, problems)

    valid = {"name": "ink", "images": [{"subject_id": subject["id"]}] * 4, "captions": [CAPTION_SECRET] * 4}
    json_cases: list[tuple[dict[str, Any], str, str]] = [
        ({**valid, "images": valid["images"][:3], "captions": [CAPTION_SECRET] * 3}, "images", "at least 4 items"),
        ({**valid, "captions": [CAPTION_SECRET] * 5}, "captions", "give one caption per image: 4 images, 5 captions"),
        ({**valid, "images": [{"subject_id": "no-such-subject"}, *valid["images"][1:]]}, "images.0.subject_id",
         "no such subject"),
        ({**valid, "images": [*valid["images"][:3], {"illustration_id": "nope", "index": 0}]},
         "images.3.illustration_id", "no finished illustration"),
        ({**valid, "images": [*valid["images"][:3], {"image_url": "http://127.0.0.1/x.png"}]},
         "images.3.image_url", "loopback"),
        ({**valid, "images": [{"subject_id": subject["id"], "image_url": "https://a.example/x.png"}] * 4},
         "images.0", "give exactly one of"),
        ({**valid, "images": [{"illustration_id": "x"}] * 4}, "images.0", "illustration_id and index go together"),
        ({**valid, "params": {"steps": 0}}, "params.steps", "greater than or equal to 1"),
        ({**valid, "webhook_url": "http://169.254.169.254/hooks"}, "webhook_url", "metadata address"),
        ({**valid, "style": "x"}, "style", "Extra inputs are not permitted"),
    ]
    for body, field, message in json_cases:
        problems = _problem(client.post("/v1/styles", headers=auth, json=body))
        assert field in problems, (field, problems)
        assert message in problems[field], (field, problems)

    assert client.post("/v1/styles", headers=auth, data="x", content_type="text/plain").status_code == 415
    assert client.post("/v1/styles", headers=auth, data="{", content_type="application/json").status_code == 400
    generate_only = {"Authorization": f"Bearer {make_key(db)}"}
    assert client.post("/v1/styles", headers=generate_only, data=style_form()).status_code == 403
    assert client.get("/v1/styles", headers=generate_only).status_code == 403
    assert client.post("/v1/styles", data=style_form()).status_code == 401
    assert versions(db) == before


def test_another_clients_subject_or_illustration_is_unknown(client: FlaskClient, auth: dict[str, str], app: Flask,
                                                            db: Database) -> None:
    other = {"Authorization": f"Bearer {make_key(db, scopes=('generate', 'styles'))}"}
    theirs = upload(client, other, user_id="u-other")
    job = succeeded_job(client, other, app, db, "u-other", "red")
    body = {"name": "ink", "captions": ["x"] * 4,
            "images": [{"subject_id": theirs["id"]}, {"illustration_id": job["id"], "index": 0}] * 2}
    problems = _problem(client.post("/v1/styles", headers=auth, json=body))
    assert set(problems) == {"images.0.subject_id", "images.1.illustration_id", "images.2.subject_id",
                             "images.3.illustration_id"}


def test_cancel_a_queued_then_a_running_version(client: FlaskClient, auth: dict[str, str], app: Flask,
                                                db: Database) -> None:
    first = train(client, auth)
    canceled = client.post("/v1/styles/ink/versions/1/cancel", headers=auth)
    assert canceled.status_code == 200
    out: Any = canceled.json
    assert out["versions"][0]["status"] == "canceled"
    assert out["versions"][0]["error"] == {"code": "canceled_by_client", "message": "canceled by the client"}
    assert client.post("/v1/styles/ink/versions/1/cancel", headers=auth).status_code == 200  # unchanged
    assert style_version(db, first["job_id"]).status == "canceled"

    second = train(client, auth)
    prepare(app, db, second["job_id"])
    with db.begin() as session:
        assert isinstance(training.claim(session, second["job_id"], "train@x:1", 60), training.TrainingClaim)
    flagged = client.post("/v1/styles/ink/versions/2/cancel", headers=auth)
    assert flagged.status_code == 202
    assert flagged.json["versions"][1]["status"] == "running"  # type: ignore[index]  # stops at its next step
    assert style_version(db, second["job_id"]).cancel_reason == "canceled_by_client"

    for path in ("/v1/styles/nope/versions/1/cancel", "/v1/styles/ink/versions/3/cancel",
                 "/v1/styles/ink/versions/99999999999/cancel"):
        assert client.post(path, headers=auth).status_code == 404, path
    other = {"Authorization": f"Bearer {make_key(db, scopes=('styles',))}"}
    assert client.post("/v1/styles/ink/versions/2/cancel", headers=other).status_code == 404


def test_pictures_of_a_user_being_deleted_are_refused(client: FlaskClient, auth: dict[str, str],
                                                      db: Database) -> None:
    subject = upload(client, auth, user_id="u-leaving")
    assert client.delete("/v1/users/u-leaving", headers=auth).status_code == 202
    refused = client.post("/v1/styles", headers=auth, data=style_form(user_id="u-leaving"))
    assert refused.status_code == 409
    assert refused.mimetype == "application/problem+json"
    refused = client.post("/v1/styles", headers=auth, json={"name": "ink", "captions": ["x"] * 4,
                                                            "images": [{"subject_id": subject["id"]}] * 4})
    assert refused.status_code == 409
    assert client.post("/v1/styles", headers=auth, data=style_form(user_id="u-staying")).status_code == 202


def test_deleting_a_user_removes_their_training_pictures_and_marks_the_versions(
        client: FlaskClient, auth: dict[str, str], app: Flask, db: Database, settings: Settings) -> None:
    storage = app.extensions["illustrations"].storage
    ready = train(client, auth, user_id="u-gone")
    prepare(app, db, ready["job_id"])
    with db.begin() as session:
        held = training.claim(session, ready["job_id"], "train@x:1", 60)
        assert isinstance(held, training.TrainingClaim)
        key = f"styles/{held.style_id}/1/lora.safetensors"
        storage.put(key, b"weights", "application/octet-stream")
        assert training.ready(session, held, storage_key=key, sha256="ab" * 32, size_bytes=7, rank=4, alpha=4.0,
                              base_profile="tiny", loss=0.1)
    kept = train(client, auth, user_id="u-kept")
    queued = train(client, auth, user_id="u-gone")
    gone_keys = [p.storage_key for p in training_images(db, ready["job_id"]) + training_images(db, queued["job_id"])]

    deletion: Any = client.delete("/v1/users/u-gone", headers=auth).json
    assert run_deletion(db, storage, settings, deletion["id"]) == "succeeded"
    status: Any = client.get(f"/v1/users/u-gone/deletions/{deletion['id']}", headers=auth).json
    assert status["status"] == "succeeded"
    assert status["parts"]["training_images"] == 8

    assert training_images(db, ready["job_id"]) == []
    assert training_images(db, queued["job_id"]) == []
    assert not any(storage.exists(key or "") for key in gone_keys)
    assert len(training_images(db, kept["job_id"])) == 4
    assert all(storage.exists(p.storage_key or "") for p in training_images(db, kept["job_id"]))
    style: Any = client.get("/v1/styles/ink", headers=auth).json
    first, second, third = style["versions"]
    assert first["status"] == "ready"
    assert first["training_data_deleted_at"] is not None
    assert first["images"] == 0
    assert style["active_version"] == 1
    assert storage.exists(key)  # the weights remain, marked
    assert second["status"] == "queued"
    assert second["training_data_deleted_at"] is None
    assert third["status"] == "canceled"
    assert third["error"]["code"] == "user_deleted"
