"""Running a user deletion (the maintenance task calls ``run_deletion``), and the relay that (re)sends it."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import exists, or_, select, update
from sqlalchemy.orm import Session

from shared import jobs, tasks
from shared.db import Database, utcnow
from shared.deletion import ACTIVE, parts
from shared.deletion.jobs import reference_prefix
from shared.errors import CancelReason
from shared.models import Job, Subject, UserDeletion
from shared.queue import Publisher
from shared.settings import Settings
from shared.states import JobStatus
from shared.storage import Storage

log = logging.getLogger(__name__)

ORPHANS = "orphaned_objects"  # in ``parts``: objects the final check found and removed


def _later(session: Session, deletion_id: str, delay_s: float, **values: Any) -> None:
    """Give the deletion back for another run after ``delay_s`` (the relay sends it again)."""
    session.execute(
        update(UserDeletion).where(UserDeletion.id == deletion_id)
        .values(run_after=utcnow(delay_s), lease_until=None, published_at=None, **values)
        .execution_options(synchronize_session=False)
    )


def _stop_jobs(session: Session, client_id: str, user_id: str) -> int:
    """Cancel the user's queued jobs now and flag the running ones; returns how many still run."""
    mine = (Job.client_id == client_id, Job.user_id == user_id)
    for job_id in session.execute(select(Job.id).where(*mine, Job.status == JobStatus.QUEUED.value)).scalars():
        jobs.canceled(session, job_id, CancelReason.USER_DELETED)
    running = list(session.execute(select(Job.id).where(*mine, Job.status == JobStatus.RUNNING.value)).scalars())
    for job_id in running:
        jobs.request_cancel(session, job_id)
    return len(running)


def _preparing(session: Session, client_id: str, user_id: str) -> list[str]:
    """The user's jobs still on the prepare queue (in any state): a preparation step may still write for them."""
    return list(session.execute(
        select(Job.id).where(Job.client_id == client_id, Job.user_id == user_id, Job.queue == tasks.QUEUE_PREPARE)
    ).scalars())


def run_deletion(db: Database, storage: Storage, settings: Settings, deletion_id: str) -> str:
    """One run: ``succeeded``, ``waiting`` (jobs still running), ``retry`` (a fault) or ``skipped``."""
    # 1. Claim it (one run at a time; a run that died leaves a lease that expires).
    with db.begin() as session:
        claimed = session.execute(
            update(UserDeletion)
            .where(UserDeletion.id == deletion_id, UserDeletion.status.in_(ACTIVE),
                   or_(UserDeletion.lease_until.is_(None), UserDeletion.lease_until < utcnow()),
                   or_(UserDeletion.run_after.is_(None), UserDeletion.run_after <= utcnow()))
            .values(status="running", lease_until=utcnow(settings.deletion_lease_s))
            .returning(UserDeletion.client_id, UserDeletion.user_id, UserDeletion.parts)
            .execution_options(synchronize_session=False)
        ).one_or_none()
    if claimed is None:
        return "skipped"
    client_id, user_id, done = claimed.client_id, claimed.user_id, dict(claimed.parts or {})
    try:
        # 2. Stop the user's jobs: queued ones end now, running ones at their next step.
        with db.begin() as session:
            running = _stop_jobs(session, client_id, user_id)
        if running:
            with db.begin() as session:
                _later(session, deletion_id, settings.deletion_retry_s)
            return "waiting"
        # 3. Every registered part, each in its own transaction (objects first, then rows).
        with db.begin() as session:
            preparing = _preparing(session, client_id, user_id)
        for item in parts():
            with db.begin() as session:
                done[item.name] = done.get(item.name, 0) + item.delete(session, storage, client_id, user_id)
        # 4. Finished, unless something of the user is still there: a job a submission in flight added, a subject
        # or a style reference a preparation step stored after the parts ran (one that does not take the deletion
        # lock: an older worker during a rolling deploy). Such references are removed here; rows mean another run.
        orphans = sum(storage.delete_prefix(reference_prefix(job_id)) for job_id in preparing)
        if orphans:
            log.warning("user deletion %s: %d object(s) written after the parts ran were removed", deletion_id,
                        orphans)
            done[ORPHANS] = done.get(ORPHANS, 0) + orphans
        with db.begin() as session:
            left = session.execute(select(
                exists().where(Job.client_id == client_id, Job.user_id == user_id)
                | exists().where(Subject.client_id == client_id, Subject.user_id == user_id)
            )).scalar_one()
            if left:
                _later(session, deletion_id, 0, parts=done)
                return "waiting"
            session.execute(
                update(UserDeletion).where(UserDeletion.id == deletion_id)
                .values(status="succeeded", parts=done, finished_at=utcnow(), lease_until=None, error=None)
                .execution_options(synchronize_session=False)
            )
        log.info("user deletion %s succeeded: %s", deletion_id, done)
        return "succeeded"
    except Exception as exc:  # a storage or database fault: the relay runs it again
        log.warning("user deletion %s failed (%s); it runs again", deletion_id, type(exc).__name__)
        with db.begin() as session:
            _later(session, deletion_id, settings.deletion_retry_s, parts=done, error=type(exc).__name__)
        return "retry"


def publish_deletion(db: Database, publisher: Publisher, deletion_id: str) -> bool:
    if not publisher.send(tasks.DELETE_USER, deletion_id, tasks.QUEUE_MAINTENANCE):
        return False
    with db.begin() as session:
        session.execute(
            update(UserDeletion).where(UserDeletion.id == deletion_id, UserDeletion.published_at.is_(None))
            .values(published_at=utcnow()).execution_options(synchronize_session=False)
        )
    return True


def relay_deletions(db: Database, publisher: Publisher, limit: int = 100) -> int:
    """Send deletions that are due and not sent (broker down at request time, waiting for running jobs, faults)."""
    with db.begin() as session:
        due = list(session.execute(
            select(UserDeletion.id)
            .where(UserDeletion.status.in_(ACTIVE), UserDeletion.published_at.is_(None),
                   or_(UserDeletion.run_after.is_(None), UserDeletion.run_after <= utcnow()))
            .order_by(UserDeletion.created_at).limit(limit)
        ).scalars())
    sent = 0
    for deletion_id in due:
        if not publish_deletion(db, publisher, deletion_id):
            break
        sent += 1
    return sent
