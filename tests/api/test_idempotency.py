"""Idempotency-Key on POST /v1/illustrations, as the contract says: replay, 422, 409 in flight, kept >= 24 h."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from api.keys import authenticate
from shared import idempotency
from shared.db import Database
from shared.models import IdempotencyKey, Job
from shared.settings import Settings
from tests.helpers import VALID, count_jobs, make_key
from worker.maintenance import upkeep


def post(client: FlaskClient, auth: dict[str, str], key: str | None, body: Any = VALID) -> Any:
    headers = {**auth, **({"Idempotency-Key": key} if key is not None else {})}
    return client.post("/v1/illustrations", json=body, headers=headers)


def test_the_same_key_and_body_replays_the_first_answer(client: FlaskClient, auth: dict[str, str],
                                                        db: Database) -> None:
    before = count_jobs(db)
    first = post(client, auth, "memory-9-take-1")
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    reordered = {"params": VALID["params"], "prompt": VALID["prompt"], "user_id": VALID["user_id"]}
    again = post(client, auth, "memory-9-take-1", reordered)  # the same request, keys in another order
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["id"] == first.json["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert again.json == first.json
    assert count_jobs(db) == before + 1
    assert post(client, auth, None).json["id"] != first.json["id"]  # no key: a new job every time


def test_the_same_key_with_another_body_is_422(client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    assert post(client, auth, "k-1").status_code == 202
    before = count_jobs(db)
    other = post(client, auth, "k-1", {**VALID, "prompt": "another memory"})
    assert other.status_code == 422
    assert other.mimetype == "application/problem+json"
    assert [error["field"] for error in other.json["errors"]] == ["Idempotency-Key"]
    assert "another memory" not in other.get_data(as_text=True)
    assert count_jobs(db) == before


def test_a_key_in_flight_is_409_until_its_holder_dies(client: FlaskClient, auth: dict[str, str], db: Database,
                                                      settings: Settings) -> None:
    with db.begin() as session:
        principal = authenticate(session, auth["Authorization"].removeprefix("Bearer "))
        assert principal is not None
        digest = idempotency.request_hash("POST", "/v1/illustrations", VALID)
        held = idempotency.begin(session, principal.client_id, "slow-one", digest, lock_s=60, ttl_s=86_400)
    assert isinstance(held, idempotency.Held)
    busy = post(client, auth, "slow-one")
    assert busy.status_code == 409
    assert busy.headers["Retry-After"]
    assert busy.mimetype == "application/problem+json"
    with db.begin() as session:  # the first request's process died: its lock runs out
        session.execute(update(IdempotencyKey).where(IdempotencyKey.key == "slow-one")
                        .values(locked_until=datetime.now(UTC) - timedelta(seconds=1)))
    taken = post(client, auth, "slow-one")
    assert taken.status_code == 202
    with db.begin() as session:
        assert not idempotency.complete(session, held, 202, {}, "{}")  # the dead holder cannot record any more
    assert post(client, auth, "slow-one").json["id"] == taken.json["id"]


def test_an_error_answer_frees_the_key(client: FlaskClient, auth: dict[str, str]) -> None:
    bad = post(client, auth, "fix-and-retry", {**VALID, "params": {"steps": 0}})
    assert bad.status_code == 422
    fixed = post(client, auth, "fix-and-retry", {**VALID, "params": {"steps": 2}})
    assert fixed.status_code == 202
    assert "Idempotent-Replayed" not in fixed.headers


def test_keys_are_per_client_and_bounded(client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    mine = post(client, auth, "shared-name")
    other = post(client, {"Authorization": f"Bearer {make_key(db)}"}, "shared-name")
    assert mine.status_code == other.status_code == 202
    assert mine.json["id"] != other.json["id"]
    for bad in ("x" * 256, "", "caf\u00e9"):
        response = client.post("/v1/illustrations", json=VALID,
                               headers={**auth, "Idempotency-Key": bad.encode().decode("latin-1")})
        assert response.status_code == 422, bad
        assert response.json["errors"][0]["field"] == "Idempotency-Key"
    assert post(client, auth, "x" * 255).status_code == 202


def test_concurrent_retries_make_one_job(app: Flask, auth: dict[str, str], db: Database) -> None:
    before = count_jobs(db)
    barrier = threading.Barrier(6)
    codes: list[int] = []

    def retry() -> None:
        client = app.test_client()
        barrier.wait()
        codes.append(post(client, auth, "storm").status_code)

    threads = [threading.Thread(target=retry) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(codes) <= {202, 409}
    assert 202 in codes
    assert count_jobs(db) == before + 1


def test_keys_are_kept_for_their_retention_then_forgotten(client: FlaskClient, auth: dict[str, str],
                                                          db: Database, settings: Settings) -> None:
    first = post(client, auth, "old-key")
    assert upkeep(db, settings) >= 0
    assert post(client, auth, "old-key").json["id"] == first.json["id"]  # kept
    with db.begin() as session:
        session.execute(update(IdempotencyKey).where(IdempotencyKey.key == "old-key")
                        .values(created_at=datetime.now(UTC) - timedelta(seconds=settings.idempotency_ttl_s + 1)))
    assert settings.idempotency_ttl_s >= 24 * 3600
    fresh = post(client, auth, "old-key")  # past retention, not yet purged: as if never used
    assert fresh.status_code == 202
    assert fresh.json["id"] != first.json["id"]
    with db.begin() as session:
        session.execute(update(IdempotencyKey).where(IdempotencyKey.key == "old-key")
                        .values(created_at=datetime.now(UTC) - timedelta(seconds=settings.idempotency_ttl_s + 1)))
    assert upkeep(db, settings) >= 1
    with db.begin() as session:
        assert session.execute(select(func.count()).select_from(IdempotencyKey)
                               .where(IdempotencyKey.key == "old-key")).scalar_one() == 0
        assert session.get(Job, first.json["id"]) is not None  # forgetting a key deletes nothing else


def test_recorded_answers_can_be_forgotten_with_their_user(client: FlaskClient, auth: dict[str, str],
                                                           db: Database) -> None:
    first = post(client, auth, "u-1-key")
    with db.begin() as session:
        row = session.execute(select(IdempotencyKey).where(IdempotencyKey.key == "u-1-key")).scalar_one()
        assert row.user_id == VALID["user_id"]
        assert idempotency.forget_user(session, row.client_id, VALID["user_id"]) >= 1
    assert post(client, auth, "u-1-key").json["id"] != first.json["id"]
