"""``Prefer: wait=N``: woken by PostgreSQL's NOTIFY (not by the periodic re-read), and by polling on SQLite."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text

from api.waiting import JobWaiter, prefer_wait
from shared import jobs
from shared.db import Database
from shared.settings import Settings
from tests.helpers import VALID, make_key


def finish_when_waited(app: Flask, job_id: str, *, deadline_s: float = 30) -> threading.Thread:
    """Finish the job from another thread (as a worker would) once a request is waiting for it."""
    svc = app.extensions["illustrations"]

    def run() -> None:
        deadline = time.monotonic() + deadline_s
        while svc.waiter.waiting() == 0 and time.monotonic() < deadline and svc.waiter.uses_notifications:
            time.sleep(0.01)
        if not svc.waiter.uses_notifications:
            time.sleep(0.2)  # SQLite: the request polls; let it poll at least once first
        with svc.db.begin() as session:
            claim = jobs.started(session, job_id, "test-worker", 60)
            assert isinstance(claim, jobs.Claim)
        with svc.db.begin() as session:
            assert jobs.succeeded(session, claim, [], timings={"inference_s": 0.1, "total_s": 0.2})

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def waiting_app(settings: Settings) -> Iterator[Flask]:
    from api import create_app

    # A re-read only every 30 s: a request answered sooner was woken by the notification.
    app = create_app(settings.model_copy(update={"wait_recheck_s": 30.0}))
    yield app
    app.extensions["illustrations"].waiter.close()
    app.extensions["illustrations"].db.engine.dispose()


def _auth(app: Flask) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key(app.extensions['illustrations'].db)}"}


def test_a_waiting_read_is_woken_by_the_notification(waiting_app: Flask) -> None:
    client, auth = waiting_app.test_client(), _auth(waiting_app)
    job: Any = client.post("/v1/illustrations", json=VALID, headers=auth).json
    thread = finish_when_waited(waiting_app, job["id"])
    started = time.monotonic()
    response = client.get(f"/v1/illustrations/{job['id']}", headers={**auth, "Prefer": "wait=20"})
    elapsed = time.monotonic() - started
    thread.join(10)
    assert response.status_code == 200
    assert response.json["status"] == "succeeded"  # type: ignore[index]
    assert response.headers["Preference-Applied"] == "wait=20"
    assert elapsed < 10, elapsed
    assert waiting_app.extensions["illustrations"].waiter.waiting() == 0


def test_a_submit_that_finishes_within_the_wait_is_200(waiting_app: Flask) -> None:
    client, auth = waiting_app.test_client(), _auth(waiting_app)
    db: Database = waiting_app.extensions["illustrations"].db
    body = {**VALID, "user_id": f"waiter-{time.monotonic_ns()}"}

    def finish_new_job() -> None:
        from sqlalchemy import select

        from shared.models import Job

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with db.begin() as session:
                job_id = session.execute(select(Job.id).where(Job.user_id == body["user_id"])).scalar()
            if job_id is not None:
                finish_when_waited(waiting_app, job_id).join(30)
                return
            time.sleep(0.01)

    thread = threading.Thread(target=finish_new_job, daemon=True)
    thread.start()
    started = time.monotonic()
    response = client.post("/v1/illustrations", json=body, headers={**auth, "Prefer": "respond-async, wait=20"})
    thread.join(30)
    assert response.status_code == 200, response.json
    assert response.json["status"] == "succeeded"  # type: ignore[index]
    assert response.headers["Location"] == f"/v1/illustrations/{response.json['id']}"  # type: ignore[index]
    assert time.monotonic() - started < 10


def test_a_wait_that_runs_out_answers_202_with_the_job(settings: Settings) -> None:
    from api import create_app

    app = create_app(settings.model_copy(update={"prefer_wait_max_s": 0.5}))
    client, auth = app.test_client(), _auth(app)
    started = time.monotonic()
    response = client.post("/v1/illustrations", json=VALID, headers={**auth, "Prefer": "wait=60"})
    assert response.status_code == 202
    assert response.json["status"] == "queued"  # type: ignore[index]
    assert response.headers["Preference-Applied"] == "wait=0.5"  # capped by the setting
    assert 0.4 < time.monotonic() - started < 5
    app.extensions["illustrations"].waiter.close()
    app.extensions["illustrations"].db.engine.dispose()


def test_on_sqlite_a_waiting_read_polls(sqlite_settings: Settings) -> None:
    from api import create_app

    app = create_app(sqlite_settings.model_copy(update={"wait_poll_s": 0.05}))
    assert not app.extensions["illustrations"].waiter.uses_notifications
    client, auth = app.test_client(), _auth(app)
    job: Any = client.post("/v1/illustrations", json=VALID, headers=auth).json
    thread = finish_when_waited(app, job["id"])
    response = client.get(f"/v1/illustrations/{job['id']}", headers={**auth, "Prefer": "wait=20"})
    thread.join(10)
    assert response.status_code == 200
    assert response.json["status"] == "succeeded"  # type: ignore[index]
    app.extensions["illustrations"].db.engine.dispose()


def test_the_listener_comes_back_after_its_connection_dies(settings: Settings) -> None:
    db = Database(settings)
    waiter = JobWaiter(db, settings.model_copy(update={"listen_reconnect_s": 0.1, "wait_recheck_s": 30.0}))
    try:
        done = threading.Event()
        finished: list[bool] = []
        thread = threading.Thread(target=lambda: finished.append(waiter.wait("job-x", 20, done.is_set)))
        thread.start()
        deadline = time.monotonic() + 10
        while waiter.waiting() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        # The job "finishes" without a notification, then the LISTEN connection dies: the listener reconnects and
        # wakes every waiter to re-read (without it, this waiter would sleep past its 20 s).
        done.set()
        with db.engine.connect() as connection:
            killed = connection.execute(text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE :listen AND pid <> pg_backend_pid() AND datname = current_database()"
            ), {"listen": "LISTEN %"}).scalars().all()
        assert killed
        assert all(killed)
        thread.join(10)
        assert finished == [True]
    finally:
        waiter.close()
        db.engine.dispose()


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("", None), ("wait=5", 5.0), ("WAIT = 7", 7.0), ("respond-async, wait=3", 3.0),
    ("handling=lenient; wait=2", 2.0), ("wait=600", 60.0), ("wait=-1", None), ("wait=abc", None),
    ('wait="4"', 4.0), ("return=minimal", None),
])
def test_prefer_wait_parsing(header: str | None, expected: float | None) -> None:
    assert prefer_wait(header, 60.0) == expected
