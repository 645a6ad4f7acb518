"""AutoBio's existing endpoint: its request as AutoBio sends it, its answer with the seed's field names."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from shared import jobs
from shared.db import Database
from shared.errors import ErrorCode
from shared.models import Job
from shared.settings import Settings
from tests.helpers import make_key, upload

AUTOBIO = {
    "prompt": "grandma teaching me to ride a bike",
    "userId": "autobio-user-1",
    "subjectReferences": [{"name": "grandma"}],
    "stylePreferences": {"artisticStyle": "watercolor", "colorPalette": "warm sepia", "mood": "nostalgic"},
    "memoryContext": {"title": "Summer of '65", "content": "We rode along the river.", "date": "1965-07-14"},
    "someFieldAutoBioAddsLater": {"ignored": True},
}


@pytest.fixture
def compat_app(settings: Settings) -> Iterator[Flask]:
    from api import create_app

    app = create_app(settings.model_copy(update={"compat_wait_s": 20.0, "wait_recheck_s": 30.0}))
    yield app
    app.extensions["illustrations"].waiter.close()
    app.extensions["illustrations"].db.engine.dispose()


def finish(db: Database, job_id: str, *, fail: ErrorCode | None = None) -> None:
    with db.begin() as session:
        claim = jobs.started(session, job_id, "w", 60)
        assert isinstance(claim, jobs.Claim)
    with db.begin() as session:
        if fail is not None:
            jobs.failed(session, claim, fail, "the reference could not be fetched")
        else:
            jobs.succeeded(session, claim, [jobs.StoredImage(0, f"jobs/{job_id}/1/0.png", "image/png", 64, 64,
                                                             "ab" * 32, 10)],
                           timings={"queued_s": 0.5, "inference_s": 2.25, "total_s": 3.0},
                           model={"profile": "tiny", "base": "tiny-sdxl-random",
                                  "ip_adapter": "ip-adapter-plus-face_sdxl_vit-h"})


def finish_when_submitted(db: Database, user_id: str, **kwargs: Any) -> threading.Thread:
    def run() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with db.begin() as session:
                job_id = session.execute(select(Job.id).where(Job.user_id == user_id)).scalar()
            if job_id is not None:
                finish(db, job_id, **kwargs)
                return
            time.sleep(0.02)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_generate_answers_with_the_seeds_field_names(compat_app: Flask) -> None:
    client = compat_app.test_client()
    db: Database = compat_app.extensions["illustrations"].db
    auth = {"Authorization": f"Bearer {make_key(db)}"}
    upload(client, auth, user_id="autobio-user-1", name="grandma")
    thread = finish_when_submitted(db, "autobio-user-1")
    response = client.post("/api/illustrations/generate", json=AUTOBIO, headers=auth)
    thread.join(30)
    assert response.status_code == 200, response.json
    body: Any = response.json
    assert set(body) >= {"imageUrl", "generationId", "metadata"}
    assert set(body["metadata"]) == {"model", "parameters", "generationTime"}
    assert body["metadata"]["generationTime"] == 2.25
    assert isinstance(body["metadata"]["generationTime"], float)
    assert body["metadata"]["model"] == "tiny-sdxl-random+ip-adapter-plus-face_sdxl_vit-h"
    assert body["metadata"]["parameters"]["width"] == 1024
    assert "seed" in body["metadata"]["parameters"]
    assert body["imageUrl"].endswith(f"/v1/illustrations/{body['generationId']}/images/0")
    # The translation onto v1: the same job, with the style and era in the prompt and the subject resolved.
    job: Any = client.get(f"/v1/illustrations/{body['generationId']}", headers=auth).json
    assert job["user_id"] == "autobio-user-1"
    assert job["prompt_used"].startswith("grandma teaching me to ride a bike, watercolor style, 1960s")
    status = client.get(f"/api/illustrations/{body['generationId']}", headers=auth)
    assert status.status_code == 200
    assert status.json == body


def test_generate_answers_202_with_a_status_url_when_not_ready(settings: Settings) -> None:
    from api import create_app

    app = create_app(settings.model_copy(update={"compat_wait_s": 0.2}))
    client = app.test_client()
    db: Database = app.extensions["illustrations"].db
    auth = {"Authorization": f"Bearer {make_key(db)}"}
    response = client.post("/api/illustrations/generate", json={**AUTOBIO, "subjectReferences": []}, headers=auth)
    assert response.status_code == 202
    body: Any = response.json
    assert body == {"generationId": body["generationId"], "status": "queued",
                    "statusUrl": f"/api/illustrations/{body['generationId']}"}
    pending = client.get(body["statusUrl"], headers=auth)
    assert pending.status_code == 202
    assert pending.json == body
    finish(db, body["generationId"])
    done = client.get(body["statusUrl"], headers=auth)
    assert done.status_code == 200
    assert done.json["generationId"] == body["generationId"]  # type: ignore[index]
    failed: Any = client.post("/api/illustrations/generate", json={**AUTOBIO, "subjectReferences": []},
                              headers=auth).json
    finish(db, failed["generationId"], fail=ErrorCode.REFERENCE_UNREACHABLE)
    answer = client.get(failed["statusUrl"], headers=auth)
    assert answer.status_code == 422
    assert answer.mimetype == "application/problem+json"
    assert "reference_unreachable" in answer.json["detail"]  # type: ignore[index]
    internal: Any = client.post("/api/illustrations/generate", json={**AUTOBIO, "subjectReferences": []},
                                headers=auth).json
    finish(db, internal["generationId"], fail=ErrorCode.OUT_OF_MEMORY)
    answer = client.get(internal["statusUrl"], headers=auth)
    assert answer.status_code == 503
    assert answer.headers["Retry-After"]
    canceled: Any = client.post("/api/illustrations/generate", json={**AUTOBIO, "subjectReferences": []},
                                headers=auth).json
    client.post(f"/v1/illustrations/{canceled['generationId']}/cancel", headers=auth)
    assert client.get(canceled["statusUrl"], headers=auth).status_code == 409
    app.extensions["illustrations"].db.engine.dispose()


def test_generate_translates_urls_and_free_text_dates(settings: Settings) -> None:
    from api import create_app

    app = create_app(settings.model_copy(update={"compat_wait_s": 0.0}))
    client = app.test_client()
    db: Database = app.extensions["illustrations"].db
    auth = {"Authorization": f"Bearer {make_key(db)}"}
    body = {**AUTOBIO, "userId": 12345, "memoryContext": {"title": "Summer", "date": "summer of 1972"},
            "subjectReferences": [{"name": "dad", "imageUrl": "https://photos.example/d.jpg"}]}
    response = client.post("/api/illustrations/generate", json=body, headers=auth)
    assert response.status_code == 202, response.json
    with db.begin() as session:
        job = session.get_one(Job, response.json["generationId"])  # type: ignore[index]
        assert job.user_id == "12345"
        assert job.queue == "illustrations.prepare"
        assert job.request["resolved"]["identity"] == [
            {"index": 0, "name": "dad", "image_url": "https://photos.example/d.jpg"}]
        assert "1970s" in (job.prompt_used or "")
    app.extensions["illustrations"].db.engine.dispose()


@pytest.mark.parametrize(("body", "field"), [
    ({"userId": "u-1"}, "prompt"),
    ({"prompt": "x"}, "userId"),
    ({"prompt": "", "userId": "u-1"}, "prompt"),
    ({"prompt": "x", "userId": "u 1"}, "userId"),
    ({"prompt": "x", "userId": "u-1", "subjectReferences": [{"imageUrl": "https://a.example/x.png"}]},
     "subjectReferences.0.name"),
    ({"prompt": "x", "userId": "u-1", "subjectReferences": [{"name": "a", "imageUrl": "ftp://a/x"}]},
     "subjectReferences.0.imageUrl"),
    ({"prompt": "x", "userId": "u-1", "subjectReferences": [{"name": "a", "imageUrl": "http://127.0.0.1/x"}]},
     "subjectReferences.0.imageUrl"),
    ({"prompt": "x", "userId": "u-1", "subjectReferences": [{"name": "nobody"}]}, "subjectReferences.0"),
    ({"prompt": "x", "userId": "u-1", "subjectReferences": [{"name": "a"}] * 5}, "subjectReferences"),
])
def test_generate_refuses_bad_requests_naming_autobios_fields(compat_app: Flask, body: dict[str, Any],
                                                              field: str) -> None:
    client = compat_app.test_client()
    auth = {"Authorization": f"Bearer {make_key(compat_app.extensions['illustrations'].db)}"}
    response = client.post("/api/illustrations/generate", json=body, headers=auth)
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert field in [error["field"] for error in response.json["errors"]], response.json  # type: ignore[index]


def test_generate_needs_a_key_and_json(compat_app: Flask) -> None:
    client = compat_app.test_client()
    assert client.post("/api/illustrations/generate", json=AUTOBIO).status_code == 401
    auth = {"Authorization": f"Bearer {make_key(compat_app.extensions['illustrations'].db)}"}
    assert client.post("/api/illustrations/generate", data="x", headers=auth).status_code == 415
    assert client.post("/api/illustrations/generate", data="{", content_type="application/json",
                       headers=auth).status_code == 400
    assert client.get("/api/illustrations/nope", headers=auth).status_code == 404
