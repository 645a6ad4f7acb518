"""Quotas and rate limits: queued jobs per client → 429, requests per key → 429, both with Retry-After."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, update

from shared.db import Database
from shared.models import Client, Job
from shared.settings import Settings
from tests.helpers import VALID, count_jobs, make_key


def make_app(settings: Settings, **overrides: Any) -> Flask:
    from api import create_app

    return create_app(settings.model_copy(update=overrides))


@pytest.fixture
def quota_app(settings: Settings) -> Iterator[Flask]:
    app = make_app(settings, max_queued_jobs_per_client=2, quota_retry_after_s=17)
    yield app
    app.extensions["illustrations"].db.engine.dispose()


def test_a_client_over_its_queued_quota_gets_429(quota_app: Flask, db: Database) -> None:
    client = quota_app.test_client()
    auth = {"Authorization": f"Bearer {make_key(db)}"}
    first: Any = client.post("/v1/illustrations", json=VALID, headers=auth).json
    assert client.post("/v1/illustrations", json=VALID, headers=auth).status_code == 202
    before = count_jobs(db)
    refused = client.post("/v1/illustrations", json=VALID, headers=auth)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "17"
    assert refused.mimetype == "application/problem+json"
    assert client.post("/v1/batches", json={"requests": [VALID]}, headers=auth).status_code == 429
    assert client.post("/api/illustrations/generate", json={"prompt": "x", "userId": "u"},
                       headers=auth).status_code == 429
    assert count_jobs(db) == before
    # Another client has its own quota.
    assert client.post("/v1/illustrations", json=VALID,
                       headers={"Authorization": f"Bearer {make_key(db)}"}).status_code == 202
    # A finished (here: canceled) job frees its place.
    client.post(f"/v1/illustrations/{first['id']}/cancel", headers=auth)
    assert client.post("/v1/illustrations", json=VALID, headers=auth).status_code == 202


def test_a_clients_own_quota_overrides_the_setting(quota_app: Flask, db: Database) -> None:
    client = quota_app.test_client()
    key = make_key(db, client_name="roomy-client")
    with db.begin() as session:
        session.execute(update(Client).where(Client.name == "roomy-client").values(max_queued_jobs=3))
    auth = {"Authorization": f"Bearer {key}"}
    assert [client.post("/v1/illustrations", json=VALID, headers=auth).status_code for _ in range(4)] == [
        202, 202, 202, 429]


def test_a_key_over_its_request_rate_gets_429_with_retry_after(settings: Settings, db: Database) -> None:
    app = make_app(settings, rate_limit="3/minute", rate_limit_storage_url=settings.broker_url)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {make_key(db)}"}
    statuses = [client.get("/v1/illustrations", headers=auth).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = client.get("/v1/illustrations", headers=auth)
    assert refused.status_code == 429
    assert refused.mimetype == "application/problem+json"
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    # Per key: another key goes on; the open routes are not limited.
    assert client.get("/v1/illustrations", headers={"Authorization": f"Bearer {make_key(db)}"}).status_code == 200
    assert all(client.get("/healthz").status_code == 200 for _ in range(5))
    app.extensions["illustrations"].db.engine.dispose()


def test_requests_go_through_when_the_rate_counter_store_is_down(settings: Settings, db: Database) -> None:
    app = make_app(settings, rate_limit="1/minute", rate_limit_storage_url="redis://127.0.0.1:1/0")
    client = app.test_client()
    auth = {"Authorization": f"Bearer {make_key(db)}"}
    assert [client.get("/v1/illustrations", headers=auth).status_code for _ in range(3)] == [200, 200, 200]
    app.extensions["illustrations"].db.engine.dispose()


def test_expired_and_revoked_keys_through_the_cli(settings: Settings, db: Database,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from cli import main
    from shared.settings import get_settings

    monkeypatch.setenv("ILLUSTRATIONS_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    try:
        created = CliRunner().invoke(main, ["keys", "create", "--name", "cli-expiry", "--expires-in", "1d"])
        assert created.exit_code == 0, created.output
        key = created.stdout.strip().splitlines()[-1]
        listing = CliRunner().invoke(main, ["keys", "list", "--name", "cli-expiry"])
        assert "active" in listing.stdout
        assert "expires 20" in listing.stdout
        assert "last used never" in listing.stdout
        app = make_app(settings.model_copy(update={"api_key_cache_s": 0}))  # a revocation is seen at once
        client = app.test_client()
        assert client.get("/v1/illustrations", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert "last used never" not in CliRunner().invoke(main, ["keys", "list", "--name", "cli-expiry"]).stdout
        revoked = CliRunner().invoke(main, ["keys", "revoke", key[:11], "--name", "cli-expiry"])
        assert revoked.exit_code == 0
        assert "revoked 1 key" in revoked.stdout
        assert client.get("/v1/illustrations", headers={"Authorization": f"Bearer {key}"}).status_code == 401
        assert "revoked" in CliRunner().invoke(main, ["keys", "list", "--name", "cli-expiry"]).stdout
        assert CliRunner().invoke(main, ["keys", "revoke", key[:11]]).exit_code != 0  # nothing live left
        assert CliRunner().invoke(main, ["keys", "create", "--name", "x", "--expires-in", "soon"]).exit_code != 0
        app.extensions["illustrations"].db.engine.dispose()
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("quota", [0, 50])  # 50: the cap reuses the quota check's count; 0: it counts on its own
def test_the_submit_publishes_only_within_the_clients_publish_cap(settings: Settings, db: Database,
                                                                 quota: int) -> None:
    app = make_app(settings, client_publish_cap=2, max_queued_jobs_per_client=quota)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {make_key(db)}"}
    ids = []
    for _ in range(3):
        response = client.post("/v1/illustrations", json=VALID, headers=auth)
        assert response.status_code == 202
        response.close()  # the outbox mark is made once the answer is sent
        ids.append(response.json["id"])  # type: ignore[index]
    with db.begin() as session:
        published = [session.get_one(Job, job_id).published_at is not None for job_id in ids]
    assert published == [True, True, False]  # the third waits in PostgreSQL for the relay
    app.extensions["illustrations"].db.engine.dispose()


def test_a_submit_costs_these_statements(settings: Settings, db: Database) -> None:
    """The submit path's round trips (a regression guard, as tests/worker/test_round_trips.py for the worker): a
    remembered key reads nothing; then the deletion lock and check, the client row locked, one count for the quota
    and the publish cap, the job and its birth transition, its queue position (the 202 carries it); after the answer,
    the outbox mark."""
    app = make_app(settings, client_publish_cap=100, max_queued_jobs_per_client=50)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {make_key(db)}"}
    client.post("/v1/illustrations", json=VALID, headers=auth).close()  # the key is read (and remembered) here
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement.split()[0] + " " + statement.split()[2 if statement.startswith("INSERT") else 1])

    engine = app.extensions["illustrations"].db.engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        response = client.post("/v1/illustrations", json=VALID, headers=auth)
        assert response.status_code == 202, statements
        assert len(statements) == 7, statements
        assert statements[-1] == "SELECT count(*)", statements  # the queue position at submit
        response.close()
        assert len(statements) == 8, statements
        assert statements[-1].startswith("UPDATE"), statements
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    app.extensions["illustrations"].db.engine.dispose()
