"""The preparation step of a training as plain code: real database, storage, broker and HTTP servers."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from shared import tasks, training
from shared.db import Database
from shared.queue import Publisher
from shared.settings import Settings
from shared.storage import Storage
from tests.helpers import make_key, photo_fetcher, style_version, succeeded_job, training_images, upload
from tests.httpservers import Server
from worker.style_preparation import prepare_style


@pytest.fixture
def auth(db: Database) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(db, scopes=('generate', 'styles'))}"}


def request(client: FlaskClient, auth: dict[str, str], images: list[dict[str, Any]]) -> str:
    response = client.post("/v1/styles", headers=auth, json={"name": "ink", "images": images,
                                                             "captions": [f"c{i}" for i in range(len(images))],
                                                             "user_id": "u-url"})
    assert response.status_code == 202, response.json
    job_id: str = response.json["job_id"]  # type: ignore[index]
    return job_id


def test_pictures_are_fetched_or_copied_into_the_set_then_handed_to_the_training_queue(
    client: FlaskClient, auth: dict[str, str], app: Flask, db: Database, storage: Storage,
    publisher: Publisher, settings: Settings, photos: Server,
) -> None:
    subject = upload(client, auth, user_id="u-sub")
    job = succeeded_job(client, auth, app, db, "u-job", "blue")
    base = f"http://photos.test:{photos.port}"
    job_id = request(client, auth, [{"subject_id": subject["id"]}, {"illustration_id": job["id"], "index": 0},
                                    {"image_url": f"{base}/dad.png"}, {"image_url": f"{base}/style.png"}])
    broker = redis.Redis.from_url(settings.broker_url)
    broker.delete(tasks.QUEUE_TRAINING)
    assert prepare_style(db, storage, photo_fetcher(), publisher, job_id) == "prepared"
    version = style_version(db, job_id)
    assert (version.status, version.queue) == ("queued", tasks.QUEUE_TRAINING)
    assert version.published_at is not None
    stored = training_images(db, job_id)
    assert [(p.source, p.user_id) for p in stored] == [("subject", "u-sub"), ("illustration", "u-job"),
                                                       ("url", "u-url"), ("url", "u-url")]
    assert [(p.width, p.height) for p in stored] == [(32, 32), (64, 64), (48, 40), (32, 32)]
    for picture in stored:
        assert picture.storage_key == training.image_key(version.style_id, version.version, picture.index)
        assert storage.get(picture.storage_key).startswith(b"\x89PNG")
        assert picture.sha256
    (message,) = broker.lrange(tasks.QUEUE_TRAINING, 0, -1)
    decoded = json.loads(message)
    assert decoded["headers"]["task"] == tasks.TRAIN
    assert json.loads(base64.b64decode(decoded["body"]))[0] == [job_id]
    assert prepare_style(db, storage, photo_fetcher(), publisher, job_id) == "skipped"  # a redelivery
    # The set no longer depends on the subject: deleting it leaves the training's copy.
    assert client.delete(f"/v1/subjects/{subject['id']}", headers=auth).status_code == 204
    assert storage.exists(stored[0].storage_key or "")


@pytest.mark.parametrize(("path", "code"), [
    ("http://intranet.test/x.png", "reference_blocked"),
    ("http://photos.test:{photos}/missing.png", "reference_unreachable"),
    ("http://photos.test:{photos}/text.png", "reference_invalid"),
])
def test_a_picture_that_cannot_be_had_fails_the_version_and_stores_nothing(
    client: FlaskClient, auth: dict[str, str], db: Database, storage: Storage,
    publisher: Publisher, photos: Server, path: str, code: str,
) -> None:
    url = path.format(photos=photos.port)
    good = f"http://photos.test:{photos.port}/dad.png"
    job_id = request(client, auth, [{"image_url": good}, {"image_url": good}, {"image_url": url},
                                    {"image_url": good}])
    assert prepare_style(db, storage, photo_fetcher(), publisher, job_id) == f"failed:{code}"
    version = style_version(db, job_id)
    assert (version.status, version.error_code) == ("failed", code)
    assert version.finished_at is not None
    assert (version.error_message or "").startswith("images.2: ")
    assert url not in (version.error_message or "")
    assert all(p.storage_key is None for p in training_images(db, job_id))
    assert not storage.exists(training.image_key(version.style_id, version.version, 0))


def test_a_subject_removed_before_preparation_fails_reference_invalid_and_a_canceled_one_stays_canceled(
    client: FlaskClient, auth: dict[str, str], db: Database, storage: Storage,
    publisher: Publisher, photos: Server,
) -> None:
    subject = upload(client, auth, user_id="u-sub")
    job_id = request(client, auth, [{"subject_id": subject["id"]}] * 4)
    assert client.delete(f"/v1/subjects/{subject['id']}", headers=auth).status_code == 204
    assert prepare_style(db, storage, photo_fetcher(), publisher, job_id) == "failed:reference_invalid"
    assert style_version(db, job_id).error_message == "images.0: the subject is no longer stored"

    other = upload(client, auth, user_id="u-sub", name="dad")
    canceled = request(client, auth, [{"subject_id": other["id"]}] * 4)
    assert client.post("/v1/styles/ink/versions/2/cancel", headers=auth).status_code == 200
    assert prepare_style(db, storage, photo_fetcher(), publisher, canceled) == "skipped"
    assert style_version(db, canceled).status == "canceled"
