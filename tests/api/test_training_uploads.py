"""Training uploads cost the API no decoding: each picture is checked from its header (format, bytes, pixels), the
set against a total of pixels, and stored as sent; the preparation step (CPU worker) decodes and normalises it.

A review sent twenty 1-bit 5000x5000 PNGs (a 62 KB body, 500 megapixels): the API decoded them all in the request.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import func, select

from shared import limits, tasks, training
from shared.db import Database
from shared.models import StyleVersion, TrainingImage
from shared.settings import Settings
from tests.helpers import make_key
from tests.image_files import encoded, png_header


@pytest.fixture
def auth(db: Database) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(db, scopes=('styles',))}"}


def bilevel(width: int, height: int) -> bytes:
    """A 1-bit PNG: a few kilobytes however many pixels it has."""
    return encoded(Image.new("1", (width, height)))


def post(client: FlaskClient, auth: dict[str, str], pictures: list[bytes]) -> Any:
    return client.post("/v1/styles", headers=auth, data={
        "name": "ink", "image": [(io.BytesIO(data), f"{i}.png") for i, data in enumerate(pictures)],
        "caption": [f"picture {i}" for i in range(len(pictures))]})


def versions(db: Database) -> int:
    with db.begin() as session:
        return int(session.execute(select(func.count()).select_from(StyleVersion)).scalar_one())


def test_uploads_are_stored_as_sent_and_the_version_goes_to_the_preparation_step(
        client: FlaskClient, auth: dict[str, str], app: Flask, db: Database, settings: Settings) -> None:
    sent = [encoded(Image.new("RGB", (40 + i, 36), "red"), "JPEG", quality=90) for i in range(3)]
    sent.append(encoded(Image.new("RGB", (50, 30), "blue"), "WEBP"))
    broker = redis.Redis.from_url(settings.broker_url)
    broker.delete(tasks.QUEUE_PREPARE, tasks.QUEUE_TRAINING)
    response = post(client, auth, sent)
    assert response.status_code == 202, response.json
    job_id = response.json["job_id"]
    with db.begin() as session:
        version = session.execute(select(StyleVersion).where(StyleVersion.job_id == job_id)).scalar_one()
        rows = list(session.execute(select(TrainingImage).where(TrainingImage.style_id == version.style_id)
                                    .order_by(TrainingImage.index)).scalars())
    assert (version.status, version.queue) == ("queued", tasks.QUEUE_PREPARE)
    storage = app.extensions["illustrations"].storage
    assert [storage.get(row.storage_key or "") for row in rows] == sent  # the bytes as sent, not decoded
    assert [row.storage_key for row in rows] == [training.image_key(version.style_id, 1, i) for i in range(4)]
    assert all(row.sha256 is None for row in rows)  # set by the preparation step, once normalised
    (message,) = broker.lrange(tasks.QUEUE_PREPARE, 0, -1)
    decoded = json.loads(message)
    assert decoded["headers"]["task"] == tasks.PREPARE_STYLE
    assert json.loads(base64.b64decode(decoded["body"]))[0] == [job_id]
    assert broker.llen(tasks.QUEUE_TRAINING) == 0


def test_more_pixels_than_a_set_may_have_is_a_named_422_and_nothing_is_written(
        client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    bomb = bilevel(5000, 5000)  # 25 megapixels: each one alone is within the upload limit
    count = limits.TRAINING_SET_MAX_PIXELS // (5000 * 5000) + 1
    body = [bomb] * count
    assert sum(len(data) for data in body) < 200_000  # a small body
    before = versions(db)
    response = post(client, auth, body)
    assert response.status_code == 422, response.json
    (error,) = response.json["errors"]
    assert error["field"] == "image"
    assert f"{count * 25_000_000} pixels" in error["message"] and f"{limits.TRAINING_SET_MAX_PIXELS}" in \
        error["message"]
    assert versions(db) == before


def test_every_upload_is_checked_from_its_header_and_each_problem_named(
        client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    good = encoded(Image.new("RGB", (32, 32), "red"))
    too_many = bilevel(6000, 5000)  # 30 megapixels in a few kilobytes
    gif = encoded(Image.new("RGB", (32, 32), "red"), "GIF")
    before = versions(db)
    response = post(client, auth, [good, b"not an image", too_many, gif, b""])
    assert response.status_code == 422
    errors = {e["field"]: e["message"] for e in response.json["errors"]}
    assert set(errors) == {"image.1", "image.2", "image.3", "image.4"}
    assert "pixels" in errors["image.2"] and "PNG, JPEG or WebP" in errors["image.3"]
    assert versions(db) == before


def test_a_header_claiming_more_pixels_than_pillow_allows_is_refused(client: FlaskClient, auth: dict[str, str]) -> None:
    header = png_header(20_000, 20_000)  # 400 megapixels: Pillow itself calls it a bomb when opening
    response = post(client, auth, [header] * 4)
    assert response.status_code == 422
    assert {e["field"] for e in response.json["errors"]} == {f"image.{i}" for i in range(4)}
