"""The preparation step as plain code: real database, storage, broker and HTTP servers; the resolver is ours."""

from __future__ import annotations

import json

import pytest
import redis
from flask.testing import FlaskClient

from shared.db import Database
from shared.models import Job, Subject
from shared.queue import Publisher
from shared.settings import Settings
from shared.storage import Storage
from tests.helpers import load, photo_fetcher, submit
from tests.httpservers import Recorder, Server
from worker.preparation import prepare_job


def test_url_references_are_fetched_stored_and_handed_to_the_gpu_queue(
    client: FlaskClient, auth: dict[str, str], db: Database, storage: Storage, publisher: Publisher,
    settings: Settings, photos: Server, recorder: Recorder,
) -> None:
    base = f"http://photos.test:{photos.port}"
    job_id = submit(client, auth, subjects=[{"name": "dad", "image_url": f"{base}/dad.png"}],
                    style={"reference": {"image_url": f"{base}/style.png"}})["id"]
    job = load(db, job_id)
    assert job.queue == "illustrations.prepare"
    assert job.published_at is not None
    queue = redis.Redis.from_url(settings.broker_url)
    queue.delete("illustrations.interactive")
    assert prepare_job(db, storage, photo_fetcher(), publisher, job_id) == "prepared"
    job = load(db, job_id)
    assert job.status == "queued"
    assert job.queue == "illustrations.interactive"
    assert job.published_at is not None
    identity = job.request["resolved"]["identity"]
    with db.begin() as session:
        subject = session.get_one(Subject, identity[0]["subject_id"])
        assert (subject.name, subject.user_id) == ("dad", "u-1")
    assert identity[0]["storage_key"] == f"subjects/{subject.id}/v1.png"
    assert storage.exists(identity[0]["storage_key"])
    style = job.request["resolved"]["style"]
    assert style["storage_key"] == f"jobs/{job_id}/references/style.png"
    assert storage.exists(style["storage_key"])
    # Everything a GPU worker needs is in storage now: no URL is left in what it reads.
    assert all("image_url" not in ref for ref in [*identity, style])
    message = json.loads(queue.lrange("illustrations.interactive", 0, -1)[0])
    assert message["headers"]["task"] == "illustrations.generate"
    assert job_id in message["headers"]["argsrepr"]
    assert prepare_job(db, storage, photo_fetcher(), publisher, job_id) == "skipped"  # a redelivery


@pytest.mark.parametrize(("path", "code"), [
    ("http://intranet.test/x.png", "reference_blocked"),
    ("http://sneaky.test:{recorder}/x.png", "reference_blocked"),
    ("http://photos.test:{photos}/missing.png", "reference_unreachable"),
    ("http://photos.test:{photos}/text.png", "reference_invalid"),
])
def test_a_reference_that_cannot_be_used_fails_the_job(
    client: FlaskClient, auth: dict[str, str], db: Database, storage: Storage, publisher: Publisher,
    photos: Server, recorder: Recorder, path: str, code: str,
) -> None:
    url = path.format(photos=photos.port, recorder=recorder.port)
    job_id = submit(client, auth, subjects=[{"name": "dad", "image_url": url}])["id"]
    assert prepare_job(db, storage, photo_fetcher(), publisher, job_id) == f"failed:{code}"
    job = load(db, job_id)
    assert job.status == "failed"
    assert job.error_code == code
    assert job.finished_at is not None
    assert job.error_message is not None
    assert job.error_message.startswith("subjects.0: ")
    assert url not in \
        job.error_message
    assert recorder.connections == 0


def test_text_only_leaves_the_subject_out_and_says_so(
    client: FlaskClient, auth: dict[str, str], db: Database, storage: Storage, publisher: Publisher,
    photos: Server, recorder: Recorder,
) -> None:
    job_id = submit(client, auth, on_subject_error="text_only", subjects=[
        {"name": "dad", "image_url": f"http://photos.test:{photos.port}/dad.png"},
        {"name": "mum", "image_url": "http://intranet.test/mum.png"}])["id"]
    assert prepare_job(db, storage, photo_fetcher(), publisher, job_id) == "prepared"
    job = load(db, job_id)
    assert [ref["name"] for ref in job.request["resolved"]["identity"]] == ["dad"]
    assert job.warnings[-1].startswith("subjects.1 left out (reference_blocked)")


def test_a_job_canceled_before_preparation_stays_canceled(
    client: FlaskClient, auth: dict[str, str], db: Database, storage: Storage, publisher: Publisher,
    photos: Server, recorder: Recorder,
) -> None:
    dad = f"http://photos.test:{photos.port}/dad.png"
    job_id = submit(client, auth, subjects=[{"name": "dad", "image_url": dad}])["id"]
    assert client.post(f"/v1/illustrations/{job_id}/cancel", headers=auth).status_code == 200
    assert prepare_job(db, storage, photo_fetcher(), publisher, job_id) == "skipped"
    assert load(db, job_id).status == "canceled"
    with db.begin() as session:
        assert session.get_one(Job, job_id).queue == "illustrations.prepare"
