"""Job-finished notifications: what wakes a request waiting with ``Prefer: wait=N``.

PostgreSQL: every terminal transition runs ``pg_notify(CHANNEL, job_id)`` in its own transaction, so the
notification is delivered exactly when the row is committed, and never for a transition that rolled back. The API
listens on one connection per process (``api.waiting``). The payload is the job id only.

SQLite (the embedded mode) has no notifications: there the API re-reads a waited-for job every
``wait_poll_s`` (a short read of a local file; see ``api.waiting``).
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

CHANNEL: Final = "illustrations_job_finished"


def job_finished(session: Session, job_id: str) -> None:
    """Queue the notification for ``job_id`` in the caller's transaction (delivered on commit)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_notify(CHANNEL, job_id)))


def jobs_finished(session: Session, job_ids: list[str]) -> None:
    for job_id in job_ids:
        job_finished(session, job_id)
