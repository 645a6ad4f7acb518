"""People through whole jobs: subjects uploaded through the API (the real detector), URL subjects through the
preparation step, the GPU worker's face crops, embeddings and metrics (real database, storage, the tiny model)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import PIL.Image
import pytest
import torch
from flask.testing import FlaskClient
from safetensors.torch import load as load_tensors
from sqlalchemy import select

from shared import faces
from shared.db import Database
from shared.fetch import Fetcher
from shared.images import normalise
from shared.models import ApiKey, GenerationMetric, Job, SubjectVersion
from shared.queue import Publisher
from shared.settings import Settings
from shared.storage import Storage
from shared.subjects import store_version
from tests.faces import astronaut, coffee, jpeg, two_faces
from tests.httpservers import Server
from worker.embeddings import embedding_key
from worker.generation import run_generation
from worker.pipeline.engine import IDENTITY
from worker.preparation import prepare_job
from worker.runtime import Runtime

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

PARAMS = {"width": 64, "height": 64, "steps": 2, "guidance_scale": 5.0, "seed": 21}


@pytest.fixture
def runtime(settings: Settings, tiny_model_dir: Path) -> Iterator[Runtime]:
    runtime = Runtime(settings.model_copy(update={"model_dir": tiny_model_dir, "torch_threads": 1}))
    yield runtime
    runtime.db.engine.dispose()


class EncoderInputs:
    """Every pixel tensor that reaches the image encoder while it is attached."""

    def __init__(self, runtime: Runtime) -> None:
        self.seen: list[torch.Tensor] = []
        encoder = runtime.engine().pipe.image_encoder
        self.handle = encoder.register_forward_pre_hook(lambda _module, args: self.seen.append(args[0].clone()))

    def close(self) -> None:
        self.handle.remove()


def upload(client: FlaskClient, auth: dict[str, str], name: str, image: PIL.Image.Image) -> Any:
    response = client.post("/v1/subjects", headers=auth,
                           data={"user_id": "u-1", "name": name, "image": (io.BytesIO(jpeg(image)), "p.jpg")})
    assert response.status_code in (200, 201), response.json
    return response.json


def submit(client: FlaskClient, auth: dict[str, str], subjects: list[dict[str, Any]], **params: Any) -> Any:
    response = client.post("/v1/illustrations", headers=auth, json={
        "user_id": "u-1", "prompt": "a picnic", "subjects": subjects, "params": {**PARAMS, **params}})
    assert response.status_code == 202, response.json
    response.close()
    return response.json


def job_row(db: Database, job_id: str) -> Job:
    with db.begin() as session:
        job = session.get_one(Job, job_id)
        session.expunge(job)
        return job


def metrics(db: Database, job_id: str) -> GenerationMetric:
    with db.begin() as session:
        row = session.execute(select(GenerationMetric).where(GenerationMetric.job_id == job_id)).scalar_one()
        session.expunge(row)
        return row


def stored_photo(storage: Storage, subject: dict[str, Any]) -> PIL.Image.Image:
    data = storage.get(f"subjects/{subject['id']}/v{subject['version']}.png")
    return PIL.Image.open(io.BytesIO(data)).convert("RGB")


def pixels_of(runtime: Runtime, image: PIL.Image.Image) -> torch.Tensor:
    return runtime.engine().pipe.feature_extractor([image], return_tensors="pt").pixel_values


def test_the_face_crop_reaches_the_image_encoder_and_a_new_photo_gets_new_embeddings(
    client: FlaskClient, auth: dict[str, str], db: Database, runtime: Runtime
) -> None:
    subject = upload(client, auth, "grandma", astronaut())
    photo = stored_photo(runtime.storage, subject)
    box = faces.as_box(subject["face"]["box"])
    crop = faces.crop(photo, box)
    assert crop.size != photo.size
    job = submit(client, auth, [{"name": "grandma"}])
    assert job_row(db, job["id"]).queue == "illustrations.interactive"  # the face is known: no preparation
    seen = EncoderInputs(runtime)
    try:
        assert run_generation(job["id"], runtime) == "succeeded"
    finally:
        seen.close()
    assert len(seen.seen) == 1
    assert torch.equal(seen.seen[0], pixels_of(runtime, crop))  # the crop, not the whole photo
    assert not torch.equal(seen.seen[0], pixels_of(runtime, photo))
    engine = runtime.engine()
    key = embedding_key(engine.encoder_revision, IDENTITY, subject["sha256"],
                        faces.crop_tag(box, faces.detector_version()))
    cached = load_tensors(runtime.storage.get(key))["embedding"]
    assert torch.equal(cached, engine.embed(IDENTITY, crop))
    assert not torch.allclose(cached, engine.embed(IDENTITY, photo))
    assert metrics(db, job["id"]).faces_found == 1

    # A new photo under the name: a new version, a new box, a new embedding (not the old one from the cache).
    again = upload(client, auth, "grandma", two_faces())
    assert again["version"] == 2 and again["face"]["box"] != subject["face"]["box"]
    second = submit(client, auth, [{"name": "grandma"}])
    seen = EncoderInputs(runtime)
    try:
        assert run_generation(second["id"], runtime) == "succeeded"
    finally:
        seen.close()
    new_crop = faces.crop(stored_photo(runtime.storage, again), faces.as_box(again["face"]["box"]))
    assert len(seen.seen) == 1 and torch.equal(seen.seen[0], pixels_of(runtime, new_crop))
    assert metrics(db, second["id"]).embeddings_cached == 0
    new_key = embedding_key(engine.encoder_revision, IDENTITY, again["sha256"],
                            faces.crop_tag(faces.as_box(again["face"]["box"]), faces.detector_version()))
    assert new_key != key and runtime.storage.exists(new_key)


def test_metrics_record_the_regions_and_the_faces_found(client: FlaskClient, auth: dict[str, str], db: Database,
                                                        runtime: Runtime) -> None:
    upload(client, auth, "grandma", astronaut())
    upload(client, auth, "cup", coffee())
    two = submit(client, auth, [{"name": "grandma"}, {"name": "cup"}])
    one = submit(client, auth, [{"name": "cup"}])
    placed = submit(client, auth, [{"name": "grandma", "region": [0.0, 0.0, 0.5, 1.0]}])
    for job in (two, one, placed):
        assert run_generation(job["id"], runtime) == "succeeded"
    assert (metrics(db, two["id"]).regions, metrics(db, two["id"]).faces_found) == (2, 1)
    assert (metrics(db, one["id"]).regions, metrics(db, one["id"]).faces_found) == (0, 0)
    assert (metrics(db, placed["id"]).regions, metrics(db, placed["id"]).faces_found) == (1, 1)


@pytest.fixture
def photos() -> Iterator[Server]:
    server = Server({"/grandma.jpg": (200, {"Content-Type": "image/jpeg"}, jpeg(astronaut())),
                     "/cup.jpg": (200, {"Content-Type": "image/jpeg"}, jpeg(coffee()))})
    yield server
    server.close()


def test_the_preparation_step_finds_the_faces_of_photos_given_by_url(
    client: FlaskClient, auth: dict[str, str], db: Database, storage: Storage, publisher: Publisher, photos: Server,
    runtime: Runtime,
) -> None:
    base = f"http://photos.test:{photos.port}"
    job = submit(client, auth, [{"name": "grandma", "image_url": f"{base}/grandma.jpg", "region": [0.4, 0, 1, 1]},
                                {"name": "cup", "image_url": f"{base}/cup.jpg", "region": [0, 0, 0.6, 1]}])
    assert [person["face_found"] for person in job["layout"]] == [None, None]
    fetcher = Fetcher(allowlist=["photos.test"], resolve=lambda _host, _port: ["127.0.0.1"], timeout_s=5)
    assert prepare_job(db, storage, fetcher, publisher, job["id"]) == "prepared"
    row = job_row(db, job["id"])
    grandma, cup = row.request["resolved"]["identity"]
    assert grandma["face"] is not None and grandma["face_count"] == 1 and grandma["region"] == [0.4, 0, 1, 1]
    assert "face" not in cup and cup["face_count"] == 0 and cup["detector"] == faces.detector_version()
    assert row.warnings == ["subjects.1: no face found in the photo: the identity adapter sees the whole photo"]
    shown: Any = client.get(f"/v1/illustrations/{job['id']}", headers=auth).json
    assert [(p["subject_id"], p["face_found"]) for p in shown["layout"]] == [
        (grandma["subject_id"], True), (cup["subject_id"], False)]
    assert run_generation(job["id"], runtime) == "succeeded"
    assert (metrics(db, job["id"]).regions, metrics(db, job["id"]).faces_found) == (2, 1)


def test_a_photo_stored_before_faces_were_detected_is_looked_at_once(
    client: FlaskClient, auth: dict[str, str], db: Database, storage: Storage, publisher: Publisher,
    runtime: Runtime,
) -> None:
    key_hash = hashlib.sha256(auth["Authorization"].split()[1].encode()).hexdigest()
    with db.begin() as session:
        client_id = session.execute(select(ApiKey.client_id).where(ApiKey.key_hash == key_hash)).scalar_one()
    with db.begin() as session:  # as the previous release stored it: no face columns
        stored = store_version(session, storage, client_id, "u-1", "grandma", normalise(jpeg(astronaut())))
        subject_id = stored.subject.id
    legacy = submit(client, auth, [{"name": "grandma"}])
    assert job_row(db, legacy["id"]).queue == "illustrations.prepare"  # the face is looked for first
    assert legacy["layout"][0]["face_found"] is None
    # A GPU worker given such a job anyway (one queued before this release) looks itself.
    assert run_generation(legacy["id"], runtime) == "succeeded"
    assert metrics(db, legacy["id"]).faces_found == 1

    waiting = submit(client, auth, [{"name": "grandma"}])
    fetcher = Fetcher(allowlist=[], timeout_s=5)
    assert prepare_job(db, storage, fetcher, publisher, waiting["id"]) == "prepared"
    ref = job_row(db, waiting["id"]).request["resolved"]["identity"][0]
    assert ref["face_count"] == 1 and ref["detector"] == faces.detector_version()
    with db.begin() as session:
        version = session.execute(select(SubjectVersion).where(SubjectVersion.subject_id == subject_id)).scalar_one()
        assert (version.face_box, version.face_count) == (ref["face"], 1)  # recorded with the version
    later = submit(client, auth, [{"name": "grandma"}])
    assert job_row(db, later["id"]).queue == "illustrations.interactive"
    assert later["layout"][0]["face_found"] is True
