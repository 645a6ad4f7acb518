"""Feedback posted at once for the same illustration, through the real API on PostgreSQL: never a failure, one
201 per job (its first rating) and 200 for the others, the latest stored."""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from shared import jobs
from shared.db import Database
from shared.models import Feedback

REQUEST = {"user_id": "u-rate", "prompt": "the picnic", "params": {"width": 64, "height": 64, "steps": 2}}
THREADS = 6
ROUNDS = 8


def succeeded_job(client: FlaskClient, auth: dict[str, str], db: Database) -> str:
    response = client.post("/v1/illustrations", json=REQUEST, headers=auth)
    assert response.status_code == 202, response.json
    job_id = str(response.json["id"])  # type: ignore[index]
    with db.begin() as session:
        claim = jobs.started(session, job_id, "test-worker", 60)
        assert isinstance(claim, jobs.Claim)
        jobs.succeeded(session, claim, [], model={"profile": "tiny", "variant": "a"})
    return job_id


def post_at_once(app: Flask, auth: dict[str, str], job_id: str) -> list[tuple[int, int]]:
    """Every thread posts its own rating once all are ready; returns (rating, status) of each answer."""
    ready = threading.Barrier(THREADS)
    answers: list[tuple[int, int]] = []

    def rate(rating: int) -> None:
        client = app.test_client()
        ready.wait(30)
        response = client.post(f"/v1/illustrations/{job_id}/feedback", headers=auth,
                               json={"rating": rating, "comment": f"take {rating}"})
        answers.append((rating, response.status_code))

    threads = [threading.Thread(target=rate, args=(1 + index % 5,)) for index in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return answers


def stored(db: Database, job_id: str) -> list[tuple[int, str | None]]:
    with db.begin() as session:
        return [(row.rating, row.comment) for row in
                session.execute(select(Feedback).where(Feedback.job_id == job_id)).scalars()]


def test_concurrent_ratings_never_fail_and_one_is_first(client: FlaskClient, app: Flask, auth: dict[str, str],
                                                        db: Database) -> None:
    for _ in range(ROUNDS):
        job_id = succeeded_job(client, auth, db)
        answers = post_at_once(app, auth, job_id)
        assert len(answers) == THREADS
        assert sorted(status for _, status in answers) == [200] * (THREADS - 1) + [201], answers
        rows = stored(db, job_id)
        assert len(rows) == 1
        assert rows[0] in {(rating, f"take {rating}") for rating, _ in answers}


def test_a_second_rating_answers_200_and_replaces_the_first(client: FlaskClient, auth: dict[str, str],
                                                            db: Database) -> None:
    job_id = succeeded_job(client, auth, db)
    url = f"/v1/illustrations/{job_id}/feedback"
    first = client.post(url, json={"rating": 5, "comment": "lovely"}, headers=auth)
    assert first.status_code == 201
    second = client.post(url, json={"rating": 2}, headers=auth)
    assert second.status_code == 200
    body: Any = second.json
    assert (body["rating"], body["comment"]) == (2, None)
    assert stored(db, job_id) == [(2, None)]
    assert body["created_at"] >= first.json["created_at"]  # type: ignore[index]
