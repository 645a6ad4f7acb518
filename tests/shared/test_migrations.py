"""Migrations: one head, `upgrade head` on an empty database, and models that agree with the migrations."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from shared.migrate import alembic_config, heads, upgrade
from shared.models import Base
from shared.settings import Settings


def test_a_single_head() -> None:
    assert len(heads()) == 1


def _assert_models_match(url: str) -> None:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()
    command.check(alembic_config(url))  # the same, as `alembic check` says it


def test_upgrade_head_on_empty_postgresql(empty_pg_url: str) -> None:
    settings = Settings(database_url=empty_pg_url)
    upgrade(settings)
    engine = sa.create_engine(empty_pg_url)
    tables = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    assert {"clients", "api_keys", "jobs", "job_images", "subjects", "subject_versions", "styles", "style_versions",
            "generation_metrics", "alembic_version"} <= tables
    _assert_models_match(empty_pg_url)
    upgrade(settings)  # idempotent


def test_upgrade_head_on_sqlite(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(var_dir=tmp_path)
    upgrade(settings)
    _assert_models_match(settings.effective_database_url)
    engine = sa.create_engine(settings.effective_database_url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_downgrade_to_base_and_back(empty_pg_url: str) -> None:
    settings = Settings(database_url=empty_pg_url)
    upgrade(settings)
    command.downgrade(alembic_config(empty_pg_url), "base")
    engine = sa.create_engine(empty_pg_url)
    assert set(sa.inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(settings)
    _assert_models_match(empty_pg_url)
