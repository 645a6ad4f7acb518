"""What a database error may say: what went wrong and where, never a value.

SQLAlchemy puts a statement's parameters into its error messages (and, with the engine logger at INFO, into its log
lines); every engine is made with ``hide_parameters=True`` (``shared.db.make_engine``), so neither carries them. The
database's own message can carry values too: PostgreSQL's DETAIL (``Failing row contains (...)``, ``Key (id)=(...)
already exists``), some primary messages (``invalid input syntax for type integer: "..."``) and whatever a function
raises. ``redact`` runs in every engine's ``handle_error`` hook, before anything can log, print or store the error,
and rewrites the message of a PostgreSQL server error to its SQLSTATE, its condition and the constraint, table and
column it is about, plus PostgreSQL's primary message for the error classes that never put a value in it. The
exception keeps its class, ``pgcode`` and ``diag``: code that looks at them sees what it saw.

SQLite's messages are left as they are: SQLite builds them from the schema (``UNIQUE constraint failed: t.c``) and
its state (``database is locked``), never from the values bound; so are errors without an SQLSTATE (a connection
that failed: host and port, no data).
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError

# SQLSTATE classes whose primary message names objects and states only: integrity violations (the values are in
# DETAIL), connection, transaction rollback (serialization, deadlock), syntax and access, lock not available,
# resources, operator intervention (statement timeout, shutdown) and system errors. Data exceptions (22), raised
# errors (P0) and anything else may quote a value: their message is left out.
PRIMARY_MESSAGE_CLASSES: Final = frozenset({"08", "23", "40", "42", "53", "55", "57", "58"})


def summary(error: BaseException) -> str | None:
    """What may be said of a PostgreSQL server error (None: not one, its message says no value)."""
    sqlstate = getattr(error, "pgcode", None) or getattr(error, "sqlstate", None)
    if not isinstance(sqlstate, str) or not sqlstate:
        return None
    parts = [f"SQLSTATE {sqlstate}"]
    diag = getattr(error, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if primary and sqlstate[:2] in PRIMARY_MESSAGE_CLASSES:
        parts.append(str(primary))
    for name in ("table_name", "column_name", "constraint_name"):
        value = getattr(diag, name, None)
        if value:
            parts.append(f"{name.removesuffix('_name')}={value}")
    parts.append("(values left out)")
    return " ".join(parts)


def redact(context: ExceptionContext) -> None:
    """The ``handle_error`` hook: the DB-API error and SQLAlchemy's wrapper of it lose any value in their message."""
    original = context.original_exception
    said = summary(original)
    if said is None:
        return
    original.args = (said,)
    wrapper = context.sqlalchemy_exception
    if isinstance(wrapper, DBAPIError):
        wrapper.args = (f"({type(original).__module__}.{type(original).__name__}) {said}",)


def install(engine: Engine) -> None:
    event.listen(engine, "handle_error", redact)
