"""The database helpers that keep writes safe and errors quiet: ``upsert`` on both databases, and database errors
that never carry a value (``hide_parameters`` and ``shared.db_errors``), on real PostgreSQL and SQLite."""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from shared.db import Database, upsert, utcnow
from shared.models import Client

MARKER = "memoir-text-7d1c"  # what a client sent: it must never show in an error


@pytest.fixture
def notes(any_db: Database) -> Iterator[sa.Table]:
    """A table of the test's own (the shared models have no simpler one-key table with a text column)."""
    table = sa.Table(f"notes_{uuid.uuid4().hex[:8]}", sa.MetaData(),
                     sa.Column("key", sa.String(36), primary_key=True), sa.Column("text", sa.Text),
                     sa.Column("at", sa.DateTime, nullable=True),
                     sa.CheckConstraint(f"text NOT LIKE '%{MARKER}%'", name="no_marker"))
    table.create(any_db.engine)
    yield table
    table.drop(any_db.engine)


def test_upsert_inserts_then_replaces_and_says_which(any_db: Database, notes: sa.Table) -> None:
    with any_db.begin() as session:
        assert upsert(session, notes, {"key": "a", "text": "first"}, key=["key"]) is True
    with any_db.begin() as session:
        assert upsert(session, notes, {"key": "a", "text": "second"}, key=["key"], refresh={"at": utcnow()}) is False
        assert upsert(session, notes, {"key": "b", "text": "other"}, key=["key"]) is True
    with any_db.begin() as session:
        rows = session.execute(sa.select(notes.c.key, notes.c.text, notes.c.at.is_not(None)).order_by(notes.c.key))
        assert [tuple(row) for row in rows] == [("a", "second", True), ("b", "other", False)]


def test_every_engine_hides_parameters(any_db: Database) -> None:
    assert any_db.engine.hide_parameters is True


def _everything_said(exc: BaseException) -> str:
    """What a log line, a traceback or Celery's failure line could show of the error (and its cause)."""
    return "\n".join([str(exc), repr(exc), "".join(traceback.format_exception(exc))])


def test_a_database_error_names_what_failed_but_no_value(any_db: Database, notes: sa.Table) -> None:
    with pytest.raises(IntegrityError) as raised, any_db.begin() as session:
        session.execute(notes.insert().values(key="k", text=f"grandma said {MARKER}"))
    said = _everything_said(raised.value)
    assert MARKER not in said
    assert "no_marker" in said or "CHECK" in said  # still says which rule it broke
    if any_db.dialect == "postgresql":
        assert "SQLSTATE 23514" in said
        assert raised.value.orig.pgcode == "23514"  # type: ignore[union-attr]


def test_a_value_in_postgresqls_own_message_is_left_out(db: Database) -> None:
    # "invalid input syntax for type integer" quotes the value in PostgreSQL's primary message, not just DETAIL.
    with pytest.raises(DBAPIError) as raised, db.begin() as session:
        session.execute(sa.select(sa.cast(sa.literal(MARKER), sa.Integer)))
    said = _everything_said(raised.value)
    assert MARKER not in said
    assert "SQLSTATE 22P02" in said


def test_a_unique_violation_keeps_its_key_out(db: Database) -> None:
    name = f"{MARKER}-{uuid.uuid4().hex[:6]}"
    with db.begin() as session:
        session.add(Client(name=name))
    with pytest.raises(IntegrityError) as raised, db.begin() as session:
        session.add(Client(name=name))
    said = _everything_said(raised.value)
    assert MARKER not in said
    assert "duplicate key value violates unique constraint" in said  # the class whose primary message is kept
    assert cast(str, raised.value.orig.pgcode) == "23505"  # type: ignore[union-attr]


def test_every_engine_of_the_service_is_made_by_make_engine() -> None:
    """``hide_parameters`` and the error hook live in ``shared.db.make_engine``: no other engine in the service's code
    (tests and benchmarks make their own, for admin work on scratch databases)."""
    root = Path(__file__).resolve().parents[2]
    elsewhere = [str(path.relative_to(root)) for package in ("api", "cli", "shared", "worker", "migrations")
                 for path in (root / package).rglob("*.py")
                 if "create_engine(" in path.read_text() or "engine_from_config(" in path.read_text()]
    assert elsewhere == ["shared/db.py"]
