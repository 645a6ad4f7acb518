"""Shared fixtures: real PostgreSQL, Redis and S3 (rclone) servers; the tiny model; the API app and keys.
Plain helper functions live in ``tests/helpers.py``; each folder's conftest adds the fixtures of its own tests.

PostgreSQL and Redis are the machine's own, on their standard loopback ports (``TEST_DATABASE_ADMIN_URL``,
``TEST_REDIS_URL`` override them): each session works in a fresh database of its own and a Redis db index it
empties first. Tests that stop or kill a server start their own instance on another port.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from shared.db import Database
from shared.migrate import upgrade
from shared.settings import Settings, get_settings
from tests.helpers import RABBITMQ_URL, REDIS_URL, SYSTEM_REDIS_URL, make_key, new_database
from tests.httpservers import Recorder
from tests.s3server import S3Server

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tests build settings explicitly; nothing from the developer's shell may leak into them.
for _name in [name for name in os.environ if name.startswith("ILLUSTRATIONS_")]:
    del os.environ[_name]
get_settings.cache_clear()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, migrated to head; dropped at the end."""
    with new_database("illustrations_test") as url:
        yield url


@pytest.fixture(scope="session")
def empty_pg_url() -> Iterator[str]:
    """An empty PostgreSQL database (no migrations run)."""
    with new_database("illustrations_empty", migrated=False) as url:
        yield url


def _emptied(url: str) -> str:
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The session's Redis db (the broker of the in-process tests), emptied once."""
    return _emptied(REDIS_URL)


@pytest.fixture
def system_redis_url() -> str:
    """An emptied Redis db for a system test's workers."""
    return _emptied(SYSTEM_REDIS_URL)


@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    """A fresh virtual host on the machine's RabbitMQ (its own queues and exchanges), deleted afterwards."""
    vhost = f"illustrations-test-{uuid.uuid4().hex[:10]}"
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
    subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True, timeout=60)
    yield f"{RABBITMQ_URL}/{vhost}"
    subprocess.run(["rabbitmqctl", "-q", "delete_vhost", vhost], capture_output=True, timeout=60)


@pytest.fixture(params=["redis", "rabbitmq"])
def system_broker_url(request: pytest.FixtureRequest) -> str:
    """The broker of a system test: Redis (the default deployment) and RabbitMQ (the tested alternative)."""
    name = "system_redis_url" if request.param == "redis" else "rabbitmq_url"
    url: str = request.getfixturevalue(name)
    return url


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (rclone serve s3: checks signatures and presign expiry) with the bucket `test-bucket`."""
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    """A socket on every local address counting connections (what a blocked fetch must never reach)."""
    rec = Recorder()
    yield rec
    rec.close()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight model, generated once per session by the same code as `models make-tiny`."""
    from worker.pipeline.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def settings(pg_url: str, redis_url: str, tmp_path: Path) -> Settings:
    """PostgreSQL + Redis + a local store in a temporary folder."""
    return Settings(var_dir=tmp_path / "var", database_url=pg_url, broker_url=redis_url,
                    storage_url=str(tmp_path / "storage"))


@pytest.fixture
def sqlite_settings(tmp_path: Path) -> Settings:
    settings = Settings(var_dir=tmp_path / "var", broker_url=REDIS_URL)
    upgrade(settings)
    return settings


@pytest.fixture(params=["postgresql", "sqlite"])
def any_db(request: pytest.FixtureRequest) -> Iterator[Database]:
    """The same test on both databases (each difference between them has one helper, tested on both)."""
    if request.param == "postgresql":
        database = Database(request.getfixturevalue("settings"))
    else:
        database = Database(request.getfixturevalue("sqlite_settings"))
    yield database
    database.engine.dispose()


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    database = Database(settings)
    yield database
    database.engine.dispose()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    from api import create_app

    application = create_app(settings)
    yield application
    application.extensions["illustrations"].waiter.close()
    application.extensions["illustrations"].db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def api_key(db: Database) -> str:
    """A `generate` key of a fresh client."""
    return make_key(db)


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}
