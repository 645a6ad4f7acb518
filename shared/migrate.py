"""Run the Alembic migrations from code (``illustrations db upgrade``, and every start in embedded mode)."""

from __future__ import annotations

import fcntl
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import migrations
from shared.settings import Settings

MIGRATIONS_DIR = Path(migrations.__file__).parent


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def heads() -> list[str]:
    return list(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Upgrade the configured database; on SQLite under a file lock, so processes starting together agree."""
    config = alembic_config(settings.effective_database_url)
    if not settings.is_sqlite:
        command.upgrade(config, revision)
        return
    settings.var_path.mkdir(parents=True, exist_ok=True)
    with open(settings.var_path / "migrate.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        command.upgrade(config, revision)
