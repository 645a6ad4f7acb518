"""The stored request end to end: written by the API, rewritten by the preparation step, read by the GPU worker
(real database, storage, HTTP server and the tiny model), for a request with subjects (stored and by URL), a style
reference, a LoRA and a memory context."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from shared import faces, styles
from shared.db import Database
from shared.fetch import Fetcher
from shared.models import ApiKey, GenerationMetric, Job
from shared.queue import Publisher
from shared.stored_request import StoredRef, StoredRequest, UrlRef
from tests.helpers import make_key, png
from tests.httpservers import Server
from worker.generation import run_generation
from worker.preparation import prepare_job
from worker.runtime import Runtime

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture
def api(runtime: Runtime) -> Iterator[Flask]:
    from api import create_app

    app = create_app(runtime.settings)  # the same database and storage as the worker
    yield app
    app.extensions["illustrations"].waiter.close()
    app.extensions["illustrations"].db.engine.dispose()


def test_a_request_written_by_the_api_is_prepared_and_run_as_written(
    api: Flask, runtime: Runtime, db: Database, photos: Server, publisher: Publisher, tiny_model_dir: Path,
    tmp_path: Path,
) -> None:
    from worker.pipeline.tiny import make_tiny_lora

    client = api.test_client()
    key = make_key(db)
    auth = {"Authorization": f"Bearer {key}"}
    subject = client.post("/v1/subjects", headers=auth, data={
        "user_id": "u-1", "name": "grandma", "image": (io.BytesIO(png((40, 48), "orange")), "g.png")}).json
    assert subject is not None
    with db.begin() as session:
        client_id = session.execute(select(ApiKey.client_id).where(
            ApiKey.key_hash == hashlib.sha256(key.encode()).hexdigest())).scalar_one()
        styles.import_version(session, runtime.storage, client_id, "ink",
                              make_tiny_lora(tiny_model_dir, tmp_path / "ink.safetensors", seed=5), "tiny")
    dad_url = f"http://photos.test:{photos.port}/dad.png"
    body: dict[str, Any] = {
        "user_id": "u-1", "prompt": "grandma and dad at the river", "negative_prompt": "blurry",
        "subjects": [{"subject_id": subject["id"]}, {"name": "dad", "image_url": dad_url}],
        "style": {"artistic_style": "watercolor", "reference": {"subject_id": subject["id"]}},
        "memory_context": {"title": "Summer of '65", "content": "We rode along the river.", "date": "1965-07-14"},
        "params": {"width": 64, "height": 64, "steps": 2, "seed": 9, "style_lora": "ink", "lora_scale": 0.7},
        "metadata": {"memory_id": "m-9"},
    }
    response = client.post("/v1/illustrations", json=body, headers=auth)
    response.close()
    assert response.status_code == 202, response.json
    job_id = str(response.json["id"])  # type: ignore[index]
    photo = {"subject_id": subject["id"], "name": "grandma", "version": 1,
             "storage_key": f"subjects/{subject['id']}/v1.png", "sha256": subject["sha256"]}
    # A person's photo also keeps what the face detector found in it (no face in a flat colour); a style reference
    # does not.
    grandma = {**photo, "face_count": 0, "detector": faces.detector_version()}

    # 1. What the API wrote: the shape rows have always had (a literal, field by field).
    with db.begin() as session:
        written = session.get_one(Job, job_id).request
    assert written == {
        "user_id": "u-1", "prompt": body["prompt"], "negative_prompt": "blurry",
        "subjects": [{"subject_id": subject["id"], "name": None, "image_url": None, "region": None},
                     {"subject_id": None, "name": "dad", "image_url": dad_url, "region": None}],
        "style": {"artistic_style": "watercolor", "color_palette": None, "mood": None,
                  "reference": {"subject_id": subject["id"], "image_url": None}},
        "memory_context": body["memory_context"],
        "params": {"width": 64, "height": 64, "steps": 2, "guidance_scale": 7.5, "seed": 9, "num_images": 1,
                   "identity_scale": 0.6, "style_scale": 0.8, "content_scale": 0.0, "style_lora": "ink",
                   "lora_scale": 0.7, "output_format": "png"},
        "priority": "interactive", "on_subject_error": "fail",
        "resolved": {"identity": [grandma, {"index": 1, "name": "dad", "image_url": dad_url}], "style": photo,
                     "style_lora": {"name": "ink", "version": None}},
        "variant": "a",
    }

    # 2. The preparation step reads it, stores dad's photo as a subject version, and writes the rest back as read.
    fetcher = Fetcher(allowlist=["photos.test"], resolve=lambda _host, _port: ["127.0.0.1"], timeout_s=5)
    assert prepare_job(runtime.db, runtime.storage, fetcher, publisher, job_id) == "prepared"
    with db.begin() as session:
        prepared = StoredRequest.model_validate(session.get_one(Job, job_id).request)
    dad = prepared.resolved.identity[1]
    assert isinstance(dad, StoredRef)
    assert (dad.name, dad.version) == ("dad", 1)
    unchanged = prepared.model_dump(mode="json", exclude={"resolved": {"identity": {1}}})
    assert unchanged == StoredRequest.model_validate(written).model_dump(mode="json",
                                                                         exclude={"resolved": {"identity": {1}}})
    assert not any(isinstance(ref, UrlRef) for ref in prepared.resolved.references)

    # 3. The GPU worker reads it: both people, the style reference and the LoRA ran.
    assert run_generation(job_id, runtime) == "succeeded"
    with db.begin() as session:
        job = session.get_one(Job, job_id)
        metric = session.execute(select(GenerationMetric).where(GenerationMetric.job_id == job_id)).scalar_one()
    assert (job.model or {}).get("style_lora") == "ink@1"
    assert metric.identity_refs == 2
    assert metric.style_ref is True
    assert metric.lora == "ink@1"
    assert metric.width == 64
    assert metric.height == 64
    assert metric.steps == 2
    assert metric.num_images == 1
