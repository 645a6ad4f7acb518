"""Lease mechanics, written once for the two kinds of leased work: generation jobs (``shared.jobs``) and trainings
(``shared.training``).

A job row and a training row (``style_versions``) hold a running attempt the same way: ``status``, ``attempt`` (the
fence), ``lease_until`` (renewed by the attempt's heartbeat), ``worker``, ``published_at`` (the outbox mark),
``progress_step`` and, once finished, ``finished_at``, ``error_code`` and ``error_message``. Every change is one
conditional UPDATE that reports whether it won: a fenced move. This module holds those statements and the values
they write; each kind's module keeps its named transitions, its table of legal ones and what its terminal
transitions do (a job's audit trail and on-finished work, a training's webhook event).

Both kinds name the lease states alike (``queued``, ``running``, ``failed``). A caller owns the transaction
(``with db.begin() as session:``); these functions only add statements to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Row, SQLColumnExpression, and_, update
from sqlalchemy.orm import InstrumentedAttribute, Session

from shared.db import utcnow
from shared.errors import ErrorCode
from shared.models import Job, StyleVersion

QUEUED, RUNNING, FAILED = "queued", "running", "failed"


@dataclass(frozen=True)
class Leased:
    """One kind of leased row: its table and the columns whose names or meanings differ between the kinds."""

    table: type[Job] | type[StyleVersion]
    key: InstrumentedAttribute[str] | InstrumentedAttribute[str | None]  # the id its queue message carries
    # Set (true, or the reason) once the client asked to cancel: the attempt stops at its next step. A column, not
    # an expression: SQLite 3.40 answers ``RETURNING x IS NOT NULL`` wrongly (1 for a NULL).
    cancel_flag: InstrumentedAttribute[bool] | InstrumentedAttribute[str | None]
    lost_attempts: SQLColumnExpression[int]  # the attempts that count against ``max_attempts``
    worker_name: str  # how a ``worker_lost`` message names the worker


def move(session: Session, kind: Leased, where: Sequence[ColumnElement[bool]], source: str, target: str,
         returning: Sequence[Any], **values: Any) -> Sequence[Row[Any]]:
    """The fenced move: ``UPDATE … SET status = target WHERE status = source AND <where> RETURNING …``; the rows it
    changed (none: another attempt or transition won). The caller checks that ``source -> target`` is legal."""
    table = kind.table
    return session.execute(
        update(table).where(table.status == source, *where).values(status=target, **values)
        .returning(*returning).execution_options(synchronize_session=False)
    ).all()


def held(kind: Leased, job_id: str, attempt: int) -> list[ColumnElement[bool]]:
    """The fence of an attempt: its row, still at its attempt number."""
    return [kind.key == job_id, kind.table.attempt == attempt]


def on_worker(kind: Leased, worker_prefix: str) -> ColumnElement[bool]:
    """The row's attempt runs on a worker named ``worker_prefix...``: the fence when the attempt number is unknown
    (its process was killed, e.g. at the hard time limit, and the main process of that worker reports it)."""
    return kind.table.worker.startswith(worker_prefix, autoescape=True)


def renew(session: Session, kind: Leased, job_id: str, attempt: int, lease_s: float,
          **progress: Any) -> bool | None:
    """The heartbeat: the lease runs until ``lease_s`` from now, and the progress values given (not None) are
    recorded. ``None``: the attempt lost the row; else whether the client asked to cancel."""
    values = {"lease_until": utcnow(lease_s), **{name: value for name, value in progress.items() if value is not None}}
    row = session.execute(
        update(kind.table).where(*held(kind, job_id, attempt), kind.table.status == RUNNING).values(**values)
        .returning(kind.cancel_flag).execution_options(synchronize_session=False)
    ).one_or_none()
    return None if row is None else bool(row[0])


def released(**values: Any) -> dict[str, Any]:
    """What giving a lease back writes, with ``values``: no lease, no worker, no publish on record (the outbox
    relay publishes the row again)."""
    return {"lease_until": None, "worker": None, "published_at": None, **values}


def ended(code: Any, message: Any, **values: Any) -> dict[str, Any]:
    """What a running attempt's failure or cancel writes, with ``values``: the finish time, the error, no lease."""
    return {"finished_at": utcnow(), "lease_until": None, "error_code": code, "error_message": message, **values}


def expire(session: Session, kind: Leased, max_attempts: int, returning: Sequence[Any], *,
           requeue: dict[str, Any], fail: dict[str, Any]) -> tuple[Sequence[Row[Any]], Sequence[Row[Any]]]:
    """Running rows whose lease ran out (their worker stopped renewing it): back to queued, released (with
    ``requeue``), or ``failed``/``worker_lost`` (with ``fail``) once ``max_attempts`` attempts were lost. Returns
    the re-queued rows and the failed rows. The caller checks that both transitions are legal."""
    table = kind.table
    expired = and_(table.status == RUNNING, table.lease_until < utcnow())
    requeued = session.execute(
        update(table).where(expired, kind.lost_attempts < max_attempts)
        .values(status=QUEUED, **released(**requeue))
        .returning(*returning).execution_options(synchronize_session=False)
    ).all()
    message = f"the {kind.worker_name} stopped responding {max_attempts} times"
    failed = session.execute(
        update(table).where(expired, kind.lost_attempts >= max_attempts)
        .values(status=FAILED, **ended(ErrorCode.WORKER_LOST.value, message, **fail))
        .returning(*returning).execution_options(synchronize_session=False)
    ).all()
    return requeued, failed
