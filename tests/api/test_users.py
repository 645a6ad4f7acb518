"""User deletion: 202 and a status resource, 409 for new submissions meanwhile, then nothing of the user left
fetchable (rows and storage objects) while other users, and objects another job still references, stay."""

from __future__ import annotations

import io
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select

from shared import jobs
from shared.db import Database
from shared.deletion import PART_MODULES, parts
from shared.deletion.run import relay_deletions, run_deletion
from shared.errors import CancelReason
from shared.models import (
    Client,
    Feedback,
    GenerationMetric,
    IdempotencyKey,
    Job,
    JobImage,
    Subject,
    SubjectVersion,
    UserDeletion,
    WebhookEvent,
)
from shared.settings import Settings
from tests.helpers import VALID, make_key, png, succeeded_job, upload


def test_deleting_a_user_leaves_nothing_of_theirs_and_others_untouched(
    client: FlaskClient, app: Flask, db: Database, settings: Settings
) -> None:
    storage = app.extensions["illustrations"].storage
    admin_key = make_key(db, scopes=("generate", "admin"))
    auth = {"Authorization": f"Bearer {admin_key}"}
    gone_subject = upload(client, auth, user_id="u-gone", name="grandma")
    kept_subject = upload(client, auth, user_id="u-kept", name="grandma")
    gone_job = succeeded_job(client, auth, app, db, "u-gone", "red")
    shared_job = succeeded_job(client, auth, app, db, "u-gone", "green")
    kept_job = succeeded_job(client, auth, app, db, "u-kept", "blue")
    queued: Any = client.post("/v1/illustrations", json={**VALID, "user_id": "u-gone"}, headers=auth).json
    running: Any = client.post("/v1/illustrations", json={**VALID, "user_id": "u-gone"}, headers=auth).json
    with db.begin() as session:
        claim = jobs.started(session, running["id"], "w", 60)
        assert isinstance(claim, jobs.Claim)
        # A cache hit of u-kept shares the image object of one of u-gone's jobs: the object must stay.
        session.add(JobImage(job_id=kept_job["id"], index=1, storage_key=shared_job["key"], content_type="image/png",
                             width=64, height=64, sha256="ef" * 32, size_bytes=1))
        client_id = session.get_one(Job, gone_job["id"]).client_id
        # The client's default webhook URL: the jobs the deletion cancels record webhook events, which go too.
        session.get_one(Client, client_id).webhook_url = "https://autobio.example/hooks"
        # What the engine and the lifecycle kept of each user: metrics rows and recorded idempotent answers.
        for user_id, job in (("u-gone", gone_job), ("u-kept", kept_job)):
            session.add(GenerationMetric(job_id=job["id"], client_id=client_id, user_id=user_id, attempt=1,
                                         outcome="succeeded", queue="illustrations.interactive", queue_wait_s=0,
                                         total_s=1, steps=2, width=64, height=64, num_images=1, identity_refs=0,
                                         style_ref=False, embeddings_cached=0))
            session.add(IdempotencyKey(client_id=client_id, key=f"key-{user_id}", request_hash="0" * 64,
                                       user_id=user_id, response_status=202, response_body="{}"))
            session.add(Feedback(job_id=job["id"], client_id=client_id, user_id=user_id, rating=4, comment="nice"))
    # Embeddings are stored by image content: u-gone's own photo goes; one u-kept also has as a subject stays.
    only_gone = "aa" * 32
    with db.begin() as session:
        version = session.execute(select(SubjectVersion).where(SubjectVersion.subject_id == gone_subject["id"])
                                  ).scalar_one()
        version.sha256 = only_gone
    assert gone_subject["sha256"] == kept_subject["sha256"]  # the same photo, uploaded by both users
    for sha256 in (only_gone, kept_subject["sha256"]):
        for revision in ("tiny-1-float32", "sdxl-2-bfloat16"):
            storage.put(f"embeddings/{sha256}/{revision}/identity.safetensors", b"x", "application/octet-stream")

    response = client.delete("/v1/users/u-gone", headers=auth)
    assert response.status_code == 202
    deletion: Any = response.json
    assert deletion["status"] == "queued"
    assert deletion["user_id"] == "u-gone"
    assert response.headers["Location"] == f"/v1/users/u-gone/deletions/{deletion['id']}"
    assert client.delete("/v1/users/u-gone", headers=auth).json["id"] == deletion["id"]  # type: ignore[index]

    # Meanwhile every submission for that user is a 409; other users go on.
    for method, path, kwargs in (
        ("post", "/v1/illustrations", {"json": {**VALID, "user_id": "u-gone"}}),
        ("post", "/v1/batches", {"json": {"requests": [{**VALID, "user_id": "u-gone"}]}}),
        ("post", "/api/illustrations/generate", {"json": {"prompt": "x", "userId": "u-gone"}}),
        ("post", "/v1/subjects", {"data": {"user_id": "u-gone", "name": "x", "image": (io.BytesIO(png()), "x.png")}}),
    ):
        refused = getattr(client, method)(path, headers=auth, **kwargs)
        assert refused.status_code == 409, (path, refused.json)
        assert refused.mimetype == "application/problem+json"
    assert client.post("/v1/illustrations", json={**VALID, "user_id": "u-kept"}, headers=auth).status_code == 202

    # First run: the queued job is canceled, the running one flagged; the deletion waits for it.
    assert run_deletion(db, storage, settings, deletion["id"]) == "waiting"
    with db.begin() as session:
        assert session.get_one(Job, queued["id"]).error_code == "user_deleted"
        assert jobs.heartbeat(session, claim, 60) is True  # the pipeline sees the cancel flag ...
        jobs.canceled(session, running["id"], CancelReason.CANCELED_BY_CLIENT, claim)  # ... and stops
    assert run_deletion(db, storage, settings, deletion["id"]) == "skipped"  # not due yet (deletion_retry_s)
    with db.begin() as session:
        session.execute(UserDeletion.__table__.update().values(run_after=None))
    assert run_deletion(db, storage, settings, deletion["id"]) == "succeeded"

    status: Any = client.get(deletion["links"]["self"], headers=auth).json
    assert status["status"] == "succeeded"
    assert status["finished_at"] is not None
    assert status["parts"] == {"embeddings": 2, "jobs": 4, "subjects": 1, "metrics": 1, "idempotency": 1,
                               "cache_entries": 0,
                               "training_images": 0, "feedback": 1, "webhooks": 2}

    # Nothing of u-gone can be fetched ...
    for job in (gone_job, shared_job, queued, running):
        assert client.get(f"/v1/illustrations/{job['id']}", headers=auth).status_code == 404
        assert client.get(f"/v1/illustrations/{job['id']}/images/0", headers=auth).status_code == 404
        assert client.get(f"/api/illustrations/{job['id']}", headers=auth).status_code == 404
    assert client.get(f"/v1/subjects/{gone_subject['id']}", headers=auth).status_code == 404
    assert client.get("/v1/illustrations?user_id=u-gone", headers=auth).json["items"] == []  # type: ignore[index]
    assert client.get("/v1/subjects?user_id=u-gone", headers=auth).json["items"] == []  # type: ignore[index]
    assert not storage.exists(gone_job["key"])
    assert not storage.exists(f"subjects/{gone_subject['id']}/v1.png")
    with db.begin() as session:
        assert session.execute(select(Job).where(Job.user_id == "u-gone")).first() is None
        assert session.execute(select(Feedback).where(Feedback.user_id == "u-gone")).first() is None
        assert session.execute(select(Feedback).where(Feedback.user_id == "u-kept")).first() is not None
        assert session.execute(select(Subject).where(Subject.user_id == "u-gone")).first() is None
        assert session.execute(select(SubjectVersion).where(SubjectVersion.subject_id == gone_subject["id"])).first() \
            is None
        assert session.execute(select(GenerationMetric).where(GenerationMetric.user_id == "u-gone")).first() is None
        assert session.execute(select(IdempotencyKey).where(IdempotencyKey.user_id == "u-gone")).first() is None
        assert session.execute(select(GenerationMetric).where(GenerationMetric.user_id == "u-kept")).first()
        assert session.execute(select(IdempotencyKey).where(IdempotencyKey.user_id == "u-kept")).first()
        assert session.execute(select(WebhookEvent).where(WebhookEvent.user_id == "u-gone")).first() is None
    assert not storage.exists(f"embeddings/{only_gone}/tiny-1-float32/identity.safetensors")
    assert not storage.exists(f"embeddings/{only_gone}/sdxl-2-bfloat16/identity.safetensors")
    assert storage.exists(f"embeddings/{kept_subject['sha256']}/tiny-1-float32/identity.safetensors")
    # ... the object another job still lists stays, and u-kept is untouched.
    assert storage.exists(shared_job["key"])
    assert storage.exists(kept_job["key"])
    assert storage.exists(f"subjects/{kept_subject['id']}/v1.png")
    kept: Any = client.get(f"/v1/illustrations/{kept_job['id']}", headers=auth).json
    assert kept["status"] == "succeeded"
    assert len(kept["images"]) == 2
    with client.get(f"/v1/illustrations/{kept_job['id']}/images/1", headers=auth) as image:
        assert image.status_code == 200
        assert Image.open(io.BytesIO(image.data)).size == (64, 64)
    assert client.get(f"/v1/subjects/{kept_subject['id']}", headers=auth).status_code == 200
    # Afterwards the user may start again.
    assert client.post("/v1/illustrations", json={**VALID, "user_id": "u-gone"}, headers=auth).status_code == 202


def test_deletion_needs_the_admin_scope_and_stays_in_its_client(client: FlaskClient, db: Database) -> None:
    generate_only = {"Authorization": f"Bearer {make_key(db)}"}
    assert client.delete("/v1/users/u-1", headers=generate_only).status_code == 403
    admin = {"Authorization": f"Bearer {make_key(db, scopes=('admin',))}"}
    other_admin = {"Authorization": f"Bearer {make_key(db, scopes=('admin',))}"}
    created: Any = client.delete("/v1/users/u-1", headers=admin).json
    assert client.get(created["links"]["self"], headers=other_admin).status_code == 404
    assert client.get(created["links"]["self"], headers=admin).status_code == 200
    assert client.get("/v1/users/u-1/deletions/nope", headers=admin).status_code == 404
    assert client.delete("/v1/users/not%20valid", headers=admin).status_code == 422


def test_the_relay_sends_deletions_that_were_not_sent(client: FlaskClient, app: Flask, db: Database) -> None:
    admin = {"Authorization": f"Bearer {make_key(db, scopes=('admin',))}"}
    created: Any = client.delete("/v1/users/u-relay", headers=admin).json
    with db.begin() as session:
        row = session.get_one(UserDeletion, created["id"])
        assert row.published_at is not None  # sent at once (the broker is up)
        row.published_at = None
    assert relay_deletions(db, app.extensions["illustrations"].publisher) >= 1
    with db.begin() as session:
        assert session.get_one(UserDeletion, created["id"]).published_at is not None


def test_the_registry_lists_this_areas_parts_in_order() -> None:
    assert PART_MODULES[:2] == ["shared.deletion.jobs", "shared.deletion.subjects"]
    names = [part.name for part in parts()]
    assert names.index("jobs") < names.index("subjects")
