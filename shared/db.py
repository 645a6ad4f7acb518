"""Engine, sessions, and the few helpers where PostgreSQL and SQLite differ (each tested on both).

- ``utcnow()`` / ``utcnow(seconds)``: the database's clock (the one clock every process shares), optionally offset.
  PostgreSQL: ``statement_timestamp()``; SQLite: ``strftime`` with microseconds (SQLAlchemy's SQLite DATETIME
  reads six fractional digits).
- ``seconds_since(expr)``: seconds from a timestamp expression to the database's now (PostgreSQL ``EXTRACT(EPOCH
  ...)``, SQLite ``julianday`` arithmetic).
- ``UTCDateTime``: timezone-aware UTC datetimes on both (SQLite stores naive UTC text).
- SQLite: WAL, a busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` for every transaction, so that a transaction
  that reads then writes waits for the lock instead of failing with ``SQLITE_BUSY`` when another writer got in
  between (the pysqlite recipe of SQLAlchemy's documentation).
- ``upsert(...)``: one ``INSERT ... ON CONFLICT DO UPDATE`` (each dialect's construct) that also says whether the row
  is new (PostgreSQL: ``xmax = 0`` in ``RETURNING``; SQLite: a read just before, exact since writers take turns).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import TIMESTAMP, Boolean, Engine, Float, Table, create_engine, event, literal_column, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import TypeDecorator

from shared import db_errors
from shared.settings import Settings, get_settings


class UTCDateTime(TypeDecorator[datetime]):
    """A ``TIMESTAMP WITH TIME ZONE`` that always gives back aware UTC datetimes, on PostgreSQL and SQLite."""

    impl = TIMESTAMP(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class utcnow(FunctionElement[datetime]):
    """The database's current UTC time, plus an optional offset in seconds: ``utcnow()``, ``utcnow(30)``."""

    type = UTCDateTime()
    inherit_cache = True
    name = "utcnow"


@compiles(utcnow, "postgresql")
def _utcnow_postgresql(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    if not element.clauses.clauses:
        return "statement_timestamp()"
    offset = compiler.process(element.clauses, **kw)
    return f"(statement_timestamp() + make_interval(secs => CAST({offset} AS DOUBLE PRECISION)))"


@compiles(utcnow, "sqlite")
def _utcnow_sqlite(element: utcnow, compiler: SQLCompiler, **kw: Any) -> str:
    # '%f' is SS.SSS; the literal '000' pads to the six digits SQLAlchemy's SQLite DATETIME parser expects.
    if not element.clauses.clauses:
        return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
    offset = compiler.process(element.clauses, **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f000', 'now', printf('%+.6f seconds', {offset}))"


class seconds_since(FunctionElement[float]):
    """Seconds from a timestamp expression to the database's current time: ``seconds_since(func.min(col))``."""

    type = Float()
    inherit_cache = True
    name = "seconds_since"


@compiles(seconds_since, "postgresql")
def _seconds_since_postgresql(element: seconds_since, compiler: SQLCompiler, **kw: Any) -> str:
    return f"EXTRACT(EPOCH FROM (statement_timestamp() - {compiler.process(element.clauses, **kw)}))"


@compiles(seconds_since, "sqlite")
def _seconds_since_sqlite(element: seconds_since, compiler: SQLCompiler, **kw: Any) -> str:
    return f"((julianday('now') - julianday({compiler.process(element.clauses, **kw)})) * 86400.0)"


def _configure_sqlite(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(settings: Settings, url: str | None = None) -> Engine:
    """The engine of every process (API, workers, commands, migrations). No database error it raises or logs
    carries a value: ``hide_parameters`` keeps the parameters out, ``shared.db_errors`` the database's own words."""
    url = url or settings.effective_database_url
    if url.startswith("sqlite"):
        settings.var_path.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": settings.sqlite_busy_timeout_ms / 1000},
                               hide_parameters=True)
        _configure_sqlite(engine, settings.sqlite_busy_timeout_ms)
        db_errors.install(engine)
        return engine
    connect_args: dict[str, Any] = {"connect_timeout": max(1, round(settings.db_connect_timeout_s))}
    if url.startswith("postgresql") and settings.db_statement_timeout_ms:
        connect_args["options"] = f"-c statement_timeout={settings.db_statement_timeout_ms}"
    engine = create_engine(
        url,
        pool_size=settings.db_pool_size,
        pool_pre_ping=True,  # a PostgreSQL restart must cost one failed check, not a 500
        connect_args=connect_args,
        hide_parameters=True,
    )
    db_errors.install(engine)
    return engine


def upsert(session: Session, table: Table, values: dict[str, Any], key: Sequence[str],
           refresh: dict[str, Any] | None = None) -> bool:
    """Write the row of ``values`` whether or not a row with the same ``key`` columns exists (then its other columns
    become those of ``values``, and ``refresh``), in one statement that a concurrent writer of the same key never
    makes fail. Returns whether the row is new."""
    dialect = session.get_bind().dialect.name
    match = [table.c[name] == values[name] for name in key]
    existed = dialect != "postgresql" and session.execute(select(literal_column("1")).select_from(table).where(
        *match)).first() is not None  # SQLite: BEGIN IMMEDIATE, so no writer comes between this read and the write
    stmt: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table).values(**values)
    changed = {name: stmt.excluded[name] for name in values if name not in key} | (refresh or {})
    stmt = stmt.on_conflict_do_update(index_elements=[table.c[name] for name in key], set_=changed)
    if dialect != "postgresql":
        session.execute(stmt)
        return not existed
    # xmax is 0 in the version of a row this statement inserted, the updating transaction's id in one it updated.
    return bool(session.execute(stmt.returning(literal_column("xmax = 0", Boolean))).scalar_one())


class Database:
    """One engine and its session factory per process."""

    def __init__(self, settings: Settings, url: str | None = None) -> None:
        self.settings = settings
        self.engine = make_engine(settings, url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._pid = os.getpid()

    @contextmanager
    def begin(self) -> Iterator[Session]:
        """A session in a transaction: committed on success, rolled back on error, closed after."""
        self._check_fork()
        with self.sessions.begin() as session:
            yield session

    def session(self) -> Session:
        self._check_fork()
        return self.sessions()

    def _check_fork(self) -> None:
        # Connections must not be shared across fork (Celery prefork, gunicorn): drop the parent's pool, leave its
        # sockets to the parent.
        if os.getpid() != self._pid:
            self.engine.dispose(close=False)
            self._pid = os.getpid()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name


def is_unavailable(exc: BaseException) -> bool:
    """Whether an error says the database cannot be reached now (down, restarting, connection lost): a fault
    to wait out and retry, unlike a bad statement."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


@functools.cache
def get_database() -> Database:
    """The process-wide database of the process-wide settings."""
    return Database(get_settings())
