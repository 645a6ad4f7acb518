"""Operator actions over the database: paused queues and clients, retrying failed jobs, canceling in bulk.

The CLI (``illustrations ops``) calls these in one transaction each and then tells the workers (broadcasts) or the
broker (publishes) what changed. Terminal states never change: "retry" submits a new job with the failed one's
request (same seed, inputs and variant; ``request.retry_of`` names the original), so the audit trail of the first
stays true. Bulk cancel uses the same transitions as a client's cancel (queued: ``canceled`` at once, with the
code ``canceled_by_client`` of the contract's closed list and the message "canceled by an operator"; running: flagged,
it stops at its next step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.orm import Session

import shared.cache  # noqa: F401  (its on-finished hook: a canceled leader's followers go back to the queue)
from shared import deletion, jobs
from shared.db import utcnow
from shared.errors import CancelReason
from shared.models import Client, Job, PausedQueue
from shared.states import JobStatus
from shared.stored_request import RequestOutline


class UnknownClient(LookupError):
    pass


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a bulk action touches; every given field must match."""

    client: str | None = None  # client name
    user_id: str | None = None
    queue: str | None = None
    codes: Sequence[str] = ()  # error codes (retry-failed)
    statuses: Sequence[str] = field(default_factory=tuple)
    older_than: timedelta | None = None  # created before now - older_than
    newer_than: timedelta | None = None  # created after now - newer_than
    limit: int = 1000

    def where(self, session: Session) -> list[ColumnElement[bool]]:
        conditions: list[ColumnElement[bool]] = []
        if self.client is not None:
            conditions.append(Job.client_id == client_id(session, self.client))
        if self.user_id is not None:
            conditions.append(Job.user_id == self.user_id)
        if self.queue is not None:
            conditions.append(Job.queue == self.queue)
        if self.codes:
            conditions.append(Job.error_code.in_(list(self.codes)))
        if self.statuses:
            conditions.append(Job.status.in_(list(self.statuses)))
        if self.older_than is not None:
            conditions.append(Job.created_at < utcnow(-self.older_than.total_seconds()))
        if self.newer_than is not None:
            conditions.append(Job.created_at >= utcnow(-self.newer_than.total_seconds()))
        return conditions


def client_id(session: Session, name: str) -> str:
    found = session.execute(select(Client.id).where(Client.name == name)).scalar_one_or_none()
    if found is None:
        raise UnknownClient(f"no client named {name!r}")
    return found


# --- Queues and clients --------------------------------------------------------------------------------------------
def pause_queue(session: Session, name: str) -> bool:
    """Record the pause (workers started later honour it); False if it was paused already."""
    if session.get(PausedQueue, name) is not None:
        return False
    session.add(PausedQueue(name=name))
    return True


def resume_queue(session: Session, name: str) -> bool:
    return bool(session.execute(delete(PausedQueue).where(PausedQueue.name == name)).rowcount)  # type: ignore[attr-defined]


def set_client_paused(session: Session, name: str, paused: bool) -> bool:
    """Pause or resume a client; True if that changed something."""
    cid = client_id(session, name)
    condition = Client.paused_at.is_(None) if paused else Client.paused_at.is_not(None)
    result = session.execute(
        update(Client).where(Client.id == cid, condition).values(paused_at=utcnow() if paused else None)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# --- Jobs in bulk --------------------------------------------------------------------------------------------------
def retry_failed(session: Session, selection: JobFilter) -> list[tuple[str, str, str]]:
    """A new queued job for each failed job selected (oldest first): ``(old id, new id, queue)``.

    A user whose data is being deleted gets none. The caller publishes the new jobs after the commit (or leaves
    them to the relay).
    """
    failed = session.execute(
        select(Job).where(Job.status == JobStatus.FAILED.value, *selection.where(session))
        .order_by(Job.created_at).limit(selection.limit)
    ).scalars().all()
    created: list[tuple[str, str, str]] = []
    for old in failed:
        if deletion.in_progress(session, old.client_id, old.user_id) is not None:
            continue
        # The outline keeps every key of the old request (whatever this version can read of it) and adds one.
        request = RequestOutline.model_validate(old.request).model_copy(update={"retry_of": old.id})
        new = jobs.new_job(
            client_id=old.client_id, user_id=old.user_id, priority=old.priority, queue=old.queue,
            request=request.model_dump(mode="json"),
            seed=old.seed, prompt_used=old.prompt_used, warnings=list(old.warnings or []), meta=old.meta,
            webhook_url=old.webhook_url,
        )
        session.add(new)
        session.flush()
        created.append((old.id, new.id, new.queue))
    return created


def cancel(session: Session, selection: JobFilter) -> tuple[list[str], list[str]]:
    """Cancel the selected queued jobs now and flag the running ones: ``(canceled, flagged)``."""
    statuses = list(selection.statuses) or [JobStatus.QUEUED.value, JobStatus.RUNNING.value]
    rows = session.execute(
        select(Job.id, Job.status).where(Job.status.in_(statuses), *selection.where(session))
        .order_by(Job.created_at).limit(selection.limit)
    ).all()
    canceled: list[str] = []
    flagged: list[str] = []
    for job_id, status in rows:
        if status == JobStatus.QUEUED.value and jobs.canceled(session, job_id, CancelReason.CANCELED_BY_CLIENT,
                                                             message="canceled by an operator"):
            canceled.append(job_id)
        elif status == JobStatus.RUNNING.value and jobs.request_cancel(session, job_id):
            flagged.append(job_id)
    return canceled, flagged
