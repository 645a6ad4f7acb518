"""Fixtures of the system tests that run fault scenarios."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from shared.migrate import upgrade
from shared.settings import Settings
from tests.conftest import ADMIN_URL, _admin_engine, _drop


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A migrated database of its own on the shared PostgreSQL: the relay of a fault test must see only its jobs."""
    name = f"illustrations_fault_{uuid.uuid4().hex[:10]}"
    admin = _admin_engine()
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(Settings(database_url=url))
    yield url
    with admin.connect() as connection:
        _drop(connection, name)
    admin.dispose()
