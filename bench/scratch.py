"""A scratch database and Redis db for one benchmark run: created and migrated before, dropped after."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
import sqlalchemy as sa

from shared.migrate import upgrade
from shared.settings import Settings


@contextmanager
def scratch(admin_url: str, redis_url: str, prefix: str) -> Iterator[tuple[Path, str]]:
    """Yield (a temporary working folder, the URL of a new migrated PostgreSQL database); ``redis_url``'s db is
    emptied first. The database (forcefully) and the folder are removed afterwards, whatever happened."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    name = f"illustrations_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    redis.Redis.from_url(redis_url).flushdb()
    try:
        upgrade(Settings(database_url=url))
        yield work, url
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(work, ignore_errors=True)
