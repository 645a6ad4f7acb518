"""A user deletion against a preparation step in flight: real PostgreSQL, storage, broker and HTTP servers.

The race is forced, not hoped for: the reference photo's server holds its answer (``tests.httpservers.Held``) until
the deletion has run, then lets the preparation go on. Whatever the interleaving, nothing of the user may outlive a
deletion that says ``succeeded``.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import Session

import shared.deletion
from shared.db import Database
from shared.deletion import Part
from shared.deletion.run import ORPHANS, run_deletion
from shared.errors import JobFailure
from shared.fetch import Fetcher
from shared.images import normalise
from shared.models import Job, Subject
from shared.queue import Publisher
from shared.settings import Settings
from shared.storage import Storage
from shared.subjects import store_version
from tests.helpers import make_key
from tests.httpservers import Held, Server
from worker.preparation import prepare_job


def png(color: str, size: tuple[int, int] = (48, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def held() -> Held:
    return Held(png("teal"))


@pytest.fixture
def photos(held: Held) -> Iterator[Server]:
    server = Server({"/dad.png": held, "/style.png": (200, {"Content-Type": "image/png"}, png("yellow", (32, 32)))})
    yield server
    held.release()
    server.close()


@pytest.fixture
def user() -> str:
    return f"u-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def admin(db: Database) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(db, scopes=('generate', 'admin'))}"}


def fetcher() -> Fetcher:
    return Fetcher(allowlist=["photos.test"], resolve=lambda _host, _port: ["127.0.0.1"], timeout_s=60)


def submit_with_urls(client: FlaskClient, auth: dict[str, str], photos: Server, user: str) -> str:
    """A job of ``user`` naming a subject photo and a style reference by URL: it waits for the preparation step."""
    base = f"http://photos.test:{photos.port}"
    response = client.post("/v1/illustrations", headers=auth, json={
        "user_id": user, "prompt": "dad at the lake", "params": {"width": 64, "height": 64},
        "subjects": [{"name": "dad", "image_url": f"{base}/dad.png"}],
        "style": {"reference": {"image_url": f"{base}/style.png"}}})
    assert response.status_code == 202, response.json
    response.close()
    job_id: str = response.json["id"]  # type: ignore[index]
    return job_id


def stored_files(settings: Settings, prefix: str) -> list[Path]:
    """Every object of the local store under ``prefix`` (the test's store is a folder of its own)."""
    top = Path(settings.storage_url) / prefix
    return [path for path in top.rglob("*") if path.is_file()] if top.exists() else []


def users_subjects(db: Database, user: str) -> list[str]:
    with db.begin() as session:
        return list(session.execute(select(Subject.id).where(Subject.user_id == user)).scalars())


def request_deletion(client: FlaskClient, admin: dict[str, str], user: str) -> dict[str, Any]:
    response = client.delete(f"/v1/users/{user}", headers=admin)
    assert response.status_code == 202, response.json
    body: dict[str, Any] = response.json  # type: ignore[assignment]
    return body


def test_a_user_deleted_while_a_photo_is_fetched_keeps_nothing(
    client: FlaskClient, admin: dict[str, str], db: Database, storage: Storage, publisher: Publisher,
    settings: Settings, photos: Server, held: Held, user: str,
) -> None:
    job_id = submit_with_urls(client, admin, photos, user)
    outcome: dict[str, str] = {}
    preparation = threading.Thread(
        target=lambda: outcome.update(result=prepare_job(db, storage, fetcher(), publisher, job_id)))
    preparation.start()
    try:
        assert held.arrived.wait(30), "the preparation never fetched the photo"
        # The fetch is in flight: the deletion cancels the job and runs every part meanwhile.
        deletion = request_deletion(client, admin, user)
        assert run_deletion(db, storage, settings, deletion["id"]) == "succeeded"
    finally:
        held.release()
        preparation.join(60)
    assert not preparation.is_alive()
    assert outcome["result"] == "skipped"
    # Nothing of the user outlives the deletion: no subject listed or stored, no reference under the job.
    listed: Any = client.get(f"/v1/subjects?user_id={user}", headers=admin).json
    assert listed["items"] == []
    assert users_subjects(db, user) == []
    assert stored_files(settings, "subjects") == []
    assert stored_files(settings, f"jobs/{job_id}") == []
    status: Any = client.get(deletion["links"]["self"], headers=admin).json
    assert status["status"] == "succeeded"


def test_a_preparation_after_the_deletion_began_cancels_the_job_and_stores_nothing(
    client: FlaskClient, admin: dict[str, str], db: Database, storage: Storage, publisher: Publisher,
    settings: Settings, photos: Server, held: Held, user: str,
) -> None:
    job_id = submit_with_urls(client, admin, photos, user)
    held.release()
    request_deletion(client, admin, user)  # requested, not run yet: the preparation sees it under the deletion lock
    assert prepare_job(db, storage, fetcher(), publisher, job_id) == "canceled"
    with db.begin() as session:
        job = session.get_one(Job, job_id)
        assert (job.status, job.error_code, job.queue) == ("canceled", "user_deleted", "illustrations.prepare")
    assert users_subjects(db, user) == []
    assert stored_files(settings, "subjects") == []
    assert stored_files(settings, f"jobs/{job_id}") == []


@pytest.fixture
def refuse_handover(db: Database) -> Iterator[Any]:
    """Makes PostgreSQL refuse to move one job off the prepare queue (a real fault at the end of the preparation's
    transaction, after its objects were written); removed afterwards, since the database is the session's."""
    name = f"test_refuse_{uuid.uuid4().hex[:8]}"

    def refuse(job_id: str) -> None:
        with db.begin() as session:
            session.execute(sa.text(f"ALTER TABLE jobs ADD CONSTRAINT {name} CHECK "
                                    f"(id <> '{job_id}' OR queue = 'illustrations.prepare') NOT VALID"))

    yield refuse
    with db.begin() as session:
        session.execute(sa.text(f"ALTER TABLE jobs DROP CONSTRAINT IF EXISTS {name}"))


def test_a_preparation_that_fails_at_the_end_removes_what_it_wrote(
    client: FlaskClient, admin: dict[str, str], db: Database, storage: Storage, publisher: Publisher,
    settings: Settings, photos: Server, held: Held, refuse_handover: Any, user: str,
) -> None:
    job_id = submit_with_urls(client, admin, photos, user)
    held.release()
    refuse_handover(job_id)
    with pytest.raises(JobFailure) as failure:
        prepare_job(db, storage, fetcher(), publisher, job_id)
    assert failure.value.transient  # the task runs again later
    assert users_subjects(db, user) == []
    assert stored_files(settings, "subjects") == []
    assert stored_files(settings, f"jobs/{job_id}") == []


@pytest.fixture
def late_writer(monkeypatch: pytest.MonkeyPatch, storage: Storage) -> dict[str, Any]:
    """A last deletion part playing a preparation step that takes no deletion lock (an older worker during a rolling
    deploy): on the first run only, after every real part, it stores a subject for the user and a style reference
    under each of the user's jobs still on the prepare queue."""
    seen: dict[str, Any] = {"runs": 0, "jobs": []}

    def write(session: Session, store: Storage, client_id: str, user_id: str) -> int:
        seen["runs"] += 1
        if seen["runs"] > 1:
            return 0
        store_version(session, store, client_id, user_id, "dad", normalise(png("teal")))
        for job_id in seen["jobs"]:
            store.put(f"jobs/{job_id}/references/style.png", png("yellow"), "image/png")
        return 0

    parts = shared.deletion.parts()  # registers the real ones first
    assert parts
    monkeypatch.setitem(shared.deletion._parts, "late_writer", Part("late_writer", 10_000, write))
    return seen


def test_the_final_check_finds_a_late_subject_and_reference(
    client: FlaskClient, admin: dict[str, str], db: Database, storage: Storage, settings: Settings,
    photos: Server, late_writer: dict[str, Any], user: str,
) -> None:
    job_id = submit_with_urls(client, admin, photos, user)  # never prepared: it stays on the prepare queue
    late_writer["jobs"].append(job_id)
    deletion = request_deletion(client, admin, user)
    # The late subject is a row: not succeeded, but run again. The late reference is removed at once.
    assert run_deletion(db, storage, settings, deletion["id"]) == "waiting"
    assert stored_files(settings, f"jobs/{job_id}") == []
    assert users_subjects(db, user) != []
    assert run_deletion(db, storage, settings, deletion["id"]) == "succeeded"
    assert users_subjects(db, user) == []
    assert stored_files(settings, "subjects") == []
    status: Any = client.get(deletion["links"]["self"], headers=admin).json
    assert status["status"] == "succeeded"
    assert status["parts"][ORPHANS] == 1
