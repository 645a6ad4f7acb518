"""Uploaded training pictures, stored as sent by the API, are decoded and normalised by the preparation step (CPU
worker): EXIF orientation applied, every piece of metadata dropped, an RGB PNG in place of the upload; a picture
whose pixels cannot be decoded fails the version (`reference_invalid`, naming it); the set's pixels in all are held
to a total, checked from each header before that picture is decoded."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient
from PIL import Image, PngImagePlugin
from sqlalchemy import select

from shared import tasks, training
from shared.db import Database
from shared.fetch import Fetcher
from shared.models import StyleVersion, TrainingImage
from shared.queue import Publisher
from shared.storage import Storage
from tests.helpers import make_key
from tests.httpservers import Server
from tests.image_files import encoded, png_header
from worker.style_preparation import prepare_style


@pytest.fixture
def auth(db: Database) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(db, scopes=('styles',))}"}


def rotated_jpeg_with_gps() -> bytes:
    """60x40 as stored, shown 40x60 (EXIF orientation 6), with a GPS position in its EXIF."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 0.0)}
    return encoded(Image.new("RGB", (60, 40), "green"), "JPEG", exif=exif.tobytes())


def png_with_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "grandma's address is 12 Elm Street")
    return encoded(Image.new("RGBA", (30, 30), (255, 0, 0, 128)), pnginfo=info)


def train(client: FlaskClient, auth: dict[str, str], pictures: list[bytes]) -> str:
    response = client.post("/v1/styles", headers=auth, data={
        "name": "ink", "image": [(io.BytesIO(data), f"{i}.bin") for i, data in enumerate(pictures)],
        "caption": [f"c{i}" for i in range(len(pictures))]})
    assert response.status_code == 202, response.json
    job_id: str = response.json["job_id"]  # type: ignore[index]
    return job_id


def state(db: Database, job_id: str) -> tuple[StyleVersion, list[TrainingImage]]:
    with db.begin() as session:
        version = session.execute(select(StyleVersion).where(StyleVersion.job_id == job_id)).scalar_one()
        rows = list(session.execute(select(TrainingImage).where(TrainingImage.style_id == version.style_id,
                                                                TrainingImage.version == version.version)
                                    .order_by(TrainingImage.index)).scalars())
        session.expunge_all()
    return version, rows


def no_fetcher() -> Fetcher:
    return Fetcher(resolve=lambda host, _port: [], timeout_s=1)


def test_uploads_are_normalised_in_the_preparation_step(client: FlaskClient, auth: dict[str, str], db: Database,
                                                        storage: Storage, publisher: Publisher) -> None:
    plain = encoded(Image.new("RGB", (32, 32), "red"))
    job_id = train(client, auth, [rotated_jpeg_with_gps(), png_with_text(), plain, plain])
    assert prepare_style(db, storage, no_fetcher(), publisher, job_id) == "prepared"
    version, rows = state(db, job_id)
    assert (version.status, version.queue) == ("queued", tasks.QUEUE_TRAINING)
    assert [(row.width, row.height) for row in rows] == [(40, 60), (30, 30), (32, 32), (32, 32)]
    for row in rows:
        assert row.storage_key == training.image_key(version.style_id, version.version, row.index)
        data = storage.get(row.storage_key)
        assert hashlib.sha256(data).hexdigest() == row.sha256
        image = Image.open(io.BytesIO(data))
        assert (image.format, image.mode) == ("PNG", "RGB")
        assert not image.info.get("exif") and "Comment" not in image.info
        assert b"Elm Street" not in data
    assert prepare_style(db, storage, no_fetcher(), publisher, job_id) == "skipped"  # a redelivery


def test_an_upload_that_cannot_be_decoded_fails_the_version_naming_it(
        client: FlaskClient, auth: dict[str, str], db: Database, storage: Storage, publisher: Publisher) -> None:
    plain = encoded(Image.new("RGB", (32, 32), "red"))
    job_id = train(client, auth, [plain, png_header(64, 64), plain, plain])  # its header is fine: accepted
    assert prepare_style(db, storage, no_fetcher(), publisher, job_id) == "failed:reference_invalid"
    version, rows = state(db, job_id)
    assert (version.status, version.error_code) == ("failed", "reference_invalid")
    assert (version.error_message or "").startswith("images.1: ")
    assert all(row.sha256 is None for row in rows)


@pytest.fixture
def photos() -> Iterator[Server]:
    picture = encoded(Image.new("RGB", (48, 40), "teal"))
    server = Server({"/p.png": (200, {"Content-Type": "image/png"}, picture)})
    yield server
    server.close()


def test_the_sets_pixels_in_all_are_capped_before_decoding(
        client: FlaskClient, auth: dict[str, str], db: Database, storage: Storage, publisher: Publisher,
        photos: Server) -> None:
    fetcher = Fetcher(allowlist=["photos.test"], resolve=lambda host, _port: ["127.0.0.1"], timeout_s=5)
    url = f"http://photos.test:{photos.port}/p.png"
    response = client.post("/v1/styles", headers=auth, json={"name": "ink", "images": [{"image_url": url}] * 4,
                                                             "captions": ["c"] * 4})
    assert response.status_code == 202, response.json
    job_id = response.json["job_id"]  # type: ignore[index]
    # Three pictures of 48x40 are 5,760 pixels: over a cap of 5,000 at the third.
    assert prepare_style(db, storage, fetcher, publisher, job_id, max_pixels=5_000) == "failed:reference_invalid"
    version, _ = state(db, job_id)
    assert version.error_message == "images.2: the training set has more than 5000 pixels in all"
