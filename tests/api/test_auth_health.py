"""Keys, scopes, health and readiness."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import event, select, update

from api.keys import authenticate, hash_key
from shared.db import Database
from shared.models import ApiKey, Client
from shared.settings import Settings
from tests.helpers import make_key

VALID = {"user_id": "u-1", "prompt": "p", "params": {"width": 64, "height": 64}}


def test_no_key_or_a_wrong_key_is_401(client: FlaskClient) -> None:
    for headers in ({}, {"Authorization": "Bearer ik_nope"}, {"Authorization": "Basic abc"}):
        response = client.post("/v1/illustrations", json=VALID, headers=headers)
        assert response.status_code == 401
        assert response.mimetype == "application/problem+json"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_key_without_the_scope_is_403(client: FlaskClient, db: Database) -> None:
    ops_only = make_key(db, scopes=("ops",))
    response = client.post("/v1/illustrations", json=VALID, headers={"Authorization": f"Bearer {ops_only}"})
    assert response.status_code == 403


def test_revoked_and_expired_keys_are_refused(settings: Settings, db: Database) -> None:
    from api import create_app

    app = create_app(settings.model_copy(update={"api_key_cache_s": 0}))  # every request reads the key
    client = app.test_client()
    key = make_key(db)
    headers = {"Authorization": f"Bearer {key}"}
    assert client.post("/v1/illustrations", json=VALID, headers=headers).status_code == 202
    with db.begin() as session:
        session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key))
                        .values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    assert client.post("/v1/illustrations", json=VALID, headers=headers).status_code == 401
    with db.begin() as session:
        session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key))
                        .values(expires_at=None, revoked_at=datetime.now(UTC)))
    assert client.post("/v1/illustrations", json=VALID, headers=headers).status_code == 401
    app.extensions["illustrations"].db.engine.dispose()


def test_a_process_remembers_a_checked_key_for_the_cache_ttl(settings: Settings, db: Database) -> None:
    """ILLUSTRATIONS_API_KEY_CACHE_S: a remembered key needs no database read; a revocation takes effect within the
    TTL; a key that expires within the TTL is never remembered, so expiry stays exact."""
    import time

    from api import create_app

    app = create_app(settings.model_copy(update={"api_key_cache_s": 1.0}))
    client = app.test_client()
    key, soon = make_key(db), make_key(db)
    expiry = datetime.now(UTC) + timedelta(seconds=0.6)
    with db.begin() as session:
        session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(soon)).values(expires_at=expiry))
    statements: list[str] = []
    engine = app.extensions["illustrations"].db.engine

    def count(*args: object) -> None:
        statements.append(str(args[2]))

    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/illustrations", headers=headers).status_code == 200  # read (and remembered)
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert client.get("/v1/illustrations", headers=headers).status_code == 200
        assert not [s for s in statements if "api_keys" in s]  # remembered: no key read, no touch
    finally:
        event.remove(engine, "before_cursor_execute", count)
    with db.begin() as session:
        session.execute(update(ApiKey).where(ApiKey.key_hash == hash_key(key)).values(revoked_at=datetime.now(UTC)))
    assert client.get("/v1/illustrations", headers=headers).status_code == 200  # within the TTL: still trusted
    soon_headers = {"Authorization": f"Bearer {soon}"}
    assert client.get("/v1/illustrations", headers=soon_headers).status_code == 200
    while datetime.now(UTC) <= expiry:  # the key's own expiry passes (well inside the cache's TTL)
        time.sleep(0.05)
    assert client.get("/v1/illustrations", headers=soon_headers).status_code == 401  # expired: not remembered
    deadline = time.monotonic() + 5
    while client.get("/v1/illustrations", headers=headers).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key was still accepted well after the TTL"
        time.sleep(0.1)
    assert client.get("/v1/illustrations", headers={"Authorization": "Bearer ik_nope"}).status_code == 401
    assert len(app.extensions["illustrations"].keys._entries) <= 2
    app.extensions["illustrations"].db.engine.dispose()


def test_keys_are_stored_hashed_and_use_is_recorded(client: FlaskClient, db: Database) -> None:
    key = make_key(db)
    with db.begin() as session:
        row = session.execute(select(ApiKey).where(ApiKey.key_hash == hash_key(key))).scalar_one()
        assert key not in (row.key_hash, row.prefix)
        assert key.startswith(row.prefix)
        assert row.last_used_at is None
    client.get("/v1/illustrations/x", headers={"Authorization": f"Bearer {key}"})
    with db.begin() as session:
        assert session.execute(select(ApiKey.last_used_at).where(ApiKey.key_hash == hash_key(key))).scalar_one()


def test_cli_keys_create_prints_the_key_alone_on_the_last_line(settings: Settings, db: Database,
                                                               monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from cli import main
    from shared.settings import get_settings

    monkeypatch.setenv("ILLUSTRATIONS_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["keys", "create", "--name", "autobio-cli", "--scope", "generate",
                                           "--scope", "ops"])
        again = CliRunner().invoke(main, ["keys", "create", "--name", "autobio-cli"])
        listing = CliRunner().invoke(main, ["keys", "list", "--name", "autobio-cli"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("ik_")
    assert " " not in key
    with db.begin() as session:
        principal = authenticate(session, key)
        assert principal is not None
        assert principal.scopes == {"generate", "ops", "metrics"}  # ops includes metrics
        assert session.execute(select(Client).where(Client.name == "autobio-cli")).scalar_one()
    second = again.stdout.strip().splitlines()[-1]
    assert second != key
    assert again.exit_code == 0
    assert listing.stdout.count("autobio-cli") == 2
    assert key not in listing.stdout


def test_healthz_and_readyz(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json == {"database": "ok", "broker": "ok"}


def test_readyz_is_503_when_the_database_is_down(settings: Settings) -> None:
    from api import create_app

    app = create_app(settings.model_copy(update={"database_url": "postgresql+psycopg2://postgres@127.0.0.1:1/x",
                                                 "db_connect_timeout_s": 1}))
    client = app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.json == {"database": "down", "broker": "ok"}
    assert client.get("/healthz").status_code == 200
    response = client.post("/v1/illustrations", json=VALID, headers={"Authorization": "Bearer ik_x"})
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.mimetype == "application/problem+json"


def test_the_api_imports_and_serves_without_torch(settings: Settings) -> None:
    code = (
        "import sys\n"
        "from shared.settings import Settings\n"
        "from api import create_app\n"
        f"app = create_app(Settings(database_url={settings.database_url!r}, broker_url={settings.broker_url!r},"
        f" storage_url={settings.effective_storage_url!r}))\n"
        "assert app.test_client().get('/readyz').status_code == 200\n"
        "heavy = [m for m in ('worker', 'torch', 'diffusers', 'transformers', 'accelerate', 'peft')\n"
        "         if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
