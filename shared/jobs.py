"""The job lifecycle as named transitions, each one fenced conditional UPDATE.

Every transition is ``UPDATE jobs SET status = :to ... WHERE id = :id AND status = :from [AND attempt = :mine]``
and reports whether it won (``rowcount == 1``). Of two workers that both ran a job, only the one whose attempt
still holds the row records a result: exactly one terminal transition and one image set per job. Which transitions
are legal is decided in ``shared.states``; timestamps come from the database clock (``utcnow``).

A caller owns the transaction (``with db.begin() as session:``); these functions only add statements to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy import ColumnElement, and_, func, insert, or_, select, update
from sqlalchemy.orm import Session

from shared import notify
from shared.db import utcnow
from shared.errors import CancelReason, ErrorCode
from shared.models import Job, JobImage
from shared.states import JobStatus, check_transition


@dataclass(frozen=True)
class Claim:
    """Proof that this attempt holds a job; every later transition of the attempt is fenced by it."""

    job_id: str
    attempt: int
    row: Any = field(default=None, compare=False, repr=False)  # the columns ``started(read=...)`` returned


@dataclass(frozen=True)
class StoredImage:
    index: int
    storage_key: str
    content_type: str
    width: int
    height: int
    sha256: str
    size_bytes: int


class ClaimRefused(StrEnum):
    """Why a delivered message does not run (the message is acked and dropped in every case)."""

    MISSING = "missing"  # no such job (deleted)
    TERMINAL = "terminal"  # already finished
    LEASED = "leased"  # another attempt holds a live lease
    DEADLINE = "deadline"  # cancel_after passed before it started: now canceled


def _move(
    session: Session,
    job_id: str,
    source: JobStatus,
    target: JobStatus,
    *,
    attempt: int | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    **values: Any,
) -> bool:
    check_transition(source, target)
    stmt = update(Job).where(Job.id == job_id, Job.status == source.value, *where)
    if attempt is not None:
        stmt = stmt.where(Job.attempt == attempt)
    result = session.execute(
        stmt.values(status=target.value, **values).execution_options(synchronize_session=False)
    )
    moved = bool(result.rowcount == 1)  # type: ignore[attr-defined]
    if moved and target.is_terminal():
        notify.job_finished(session, job_id)  # wakes requests waiting with Prefer: wait (on commit)
    return moved


# --- (new) -> queued ------------------------------------------------------------------------------------------------
def new_job(**columns: Any) -> Job:
    """A job row born ``queued`` (the caller adds it to a session and commits before publishing)."""
    check_transition(None, JobStatus.QUEUED)
    return Job(status=JobStatus.QUEUED.value, attempt=0, **columns)


def mark_published(session: Session, job_id: str) -> bool:
    """The outbox mark: the broker has the message of this queued job."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
        .values(published_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(session.execute(stmt).rowcount == 1)  # type: ignore[attr-defined]


def unpublished(session: Session, older_than_s: float, limit: int = 500) -> list[tuple[str, str]]:
    """Queued jobs whose publish is missing (created over ``older_than_s`` ago): ``(id, queue)`` oldest first."""
    rows = session.execute(
        select(Job.id, Job.queue)
        .where(
            Job.status == JobStatus.QUEUED.value,
            Job.published_at.is_(None),
            Job.created_at < utcnow(-older_than_s),
        )
        .order_by(Job.created_at)
        .limit(limit)
    )
    return [(row.id, row.queue) for row in rows]


# --- preparation (queued, on the prepare queue) -------------------------------------------------------------------
def prepared(session: Session, job_id: str, prepare_queue: str, gpu_queue: str, request: dict[str, Any],
             warnings: list[str]) -> bool:
    """Hand a prepared job to its GPU queue (its references are now stored); the caller publishes after commit."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value, Job.queue == prepare_queue)
        .values(queue=gpu_queue, request=request, warnings=warnings, published_at=None)
        .execution_options(synchronize_session=False)
    )
    return bool(session.execute(stmt).rowcount == 1)  # type: ignore[attr-defined]


def preparation_failed(session: Session, job_id: str, prepare_queue: str, code: ErrorCode, message: str) -> bool:
    """A reference URL could not be used: the job fails before it reaches a GPU."""
    return _move(session, job_id, JobStatus.QUEUED, JobStatus.FAILED, where=[Job.queue == prepare_queue],
                 finished_at=utcnow(), error_code=code.value, error_message=message)


# --- queued -> running ----------------------------------------------------------------------------------------------
def started(session: Session, job_id: str, worker: str, lease_s: float,
            read: Sequence[Any] = ()) -> Claim | ClaimRefused:
    """Claim a queued job for a new attempt (attempt + 1, lease until now + ``lease_s``), or say why not.

    The progress total becomes the request's step count. ``read``: columns to return with the claim (``Claim.row``),
    read by the same statement, so a worker claims and reads its job in one round trip.
    """
    check_transition(JobStatus.QUEUED, JobStatus.RUNNING)
    not_expired = or_(Job.cancel_after.is_(None), Job.cancel_after > utcnow())
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value, not_expired)
        .values(
            status=JobStatus.RUNNING.value,
            attempt=Job.attempt + 1,
            lease_until=utcnow(lease_s),
            worker=worker,
            started_at=utcnow(),
            progress_step=0,
            progress_total=Job.request[("params", "steps")].as_integer(),
        )
        .returning(Job.attempt, *read)
        .execution_options(synchronize_session=False)
    )
    row = session.execute(stmt).one_or_none()
    if row is not None:
        return Claim(job_id, row[0], row if read else None)
    status = session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()
    if status is None:
        return ClaimRefused.MISSING
    if JobStatus(status).is_terminal():
        return ClaimRefused.TERMINAL
    if status == JobStatus.QUEUED.value and canceled(session, job_id, CancelReason.DEADLINE):
        return ClaimRefused.DEADLINE
    return ClaimRefused.LEASED


def heartbeat(session: Session, claim: Claim, lease_s: float, step: int | None = None) -> bool | None:
    """Renew the lease (and record progress). ``None``: the attempt lost the job; else whether cancel was asked."""
    values: dict[str, Any] = {"lease_until": utcnow(lease_s)}
    if step is not None:
        values["progress_step"] = step
    stmt = (
        update(Job)
        .where(Job.id == claim.job_id, Job.status == JobStatus.RUNNING.value, Job.attempt == claim.attempt)
        .values(**values)
        .returning(Job.cancel_requested)
        .execution_options(synchronize_session=False)
    )
    result = session.execute(stmt).scalar_one_or_none()
    return None if result is None else bool(result)


# --- running -> terminal ------------------------------------------------------------------------------------------
def succeeded(
    session: Session,
    claim: Claim,
    images: Sequence[StoredImage],
    *,
    timings: dict[str, float] | None = None,
    model: dict[str, Any] | None = None,
    prompt_used: str | None = None,
    warnings: list[str] | None = None,
) -> bool:
    """Record the attempt's images and finish the job, if this attempt still holds it."""
    values: dict[str, Any] = {"finished_at": utcnow(), "lease_until": None, "progress_step": Job.progress_total}
    if timings is not None:
        values["timings"] = timings
    if model is not None:
        values["model"] = model
    if prompt_used is not None:
        values["prompt_used"] = prompt_used
    if warnings is not None:
        values["warnings"] = warnings
    if not _move(session, claim.job_id, JobStatus.RUNNING, JobStatus.SUCCEEDED, attempt=claim.attempt, **values):
        return False
    if images:  # a Core INSERT: the ORM's unit of work costs a few ms on a busy CPU, per job
        session.execute(insert(JobImage), [{"job_id": claim.job_id, **asdict(image)} for image in images])
    return True


def failed(
    session: Session,
    claim: Claim,
    code: ErrorCode,
    message: str,
    *,
    timings: dict[str, float] | None = None,
    model: dict[str, Any] | None = None,
) -> bool:
    values: dict[str, Any] = {"finished_at": utcnow(), "lease_until": None, "error_code": code.value,
                              "error_message": message}
    if timings is not None:
        values["timings"] = timings
    if model is not None:
        values["model"] = model
    return _move(session, claim.job_id, JobStatus.RUNNING, JobStatus.FAILED, attempt=claim.attempt, **values)


def failed_on_worker(session: Session, job_id: str, worker_prefix: str, code: ErrorCode, message: str) -> bool:
    """Fail a running job whose attempt runs on a worker named ``worker_prefix...`` (the attempt is not known:
    its process was killed, e.g. at the hard time limit, and the main process of that worker reports it)."""
    return _move(
        session,
        job_id,
        JobStatus.RUNNING,
        JobStatus.FAILED,
        where=[Job.worker.startswith(worker_prefix, autoescape=True)],
        finished_at=utcnow(),
        lease_until=None,
        error_code=code.value,
        error_message=message,
    )


def canceled(session: Session, job_id: str, reason: CancelReason, claim: Claim | None = None) -> bool:
    """Cancel a queued job (no claim), or a running one by the attempt that holds it."""
    values: dict[str, Any] = {
        "finished_at": utcnow(),
        "lease_until": None,
        "error_code": reason.value,
        "error_message": _CANCEL_MESSAGES[reason],
    }
    if claim is None:
        return _move(session, job_id, JobStatus.QUEUED, JobStatus.CANCELED, **values)
    return _move(session, job_id, JobStatus.RUNNING, JobStatus.CANCELED, attempt=claim.attempt, **values)


_CANCEL_MESSAGES = {
    CancelReason.CANCELED_BY_CLIENT: "canceled by the client",
    CancelReason.DEADLINE: "not started before cancel_after",
    CancelReason.USER_DELETED: "the user's data was deleted",
}


def request_cancel(session: Session, job_id: str) -> bool:
    """Flag a running job; its step callback sees the flag and stops."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
        .values(cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    return bool(session.execute(stmt).rowcount == 1)  # type: ignore[attr-defined]


# --- running -> queued ----------------------------------------------------------------------------------------------
def requeued(session: Session, claim: Claim) -> bool:
    """Give the job back (worker stopping, transient fault); the outbox relay publishes it again."""
    return _move(
        session,
        claim.job_id,
        JobStatus.RUNNING,
        JobStatus.QUEUED,
        attempt=claim.attempt,
        lease_until=None,
        worker=None,
        published_at=None,
        progress_step=None,
    )


def expire_leases(session: Session, max_attempts: int) -> tuple[list[str], list[str]]:
    """Running jobs whose lease ran out: back to queued, or ``failed``/``worker_lost`` after the last attempt."""
    check_transition(JobStatus.RUNNING, JobStatus.QUEUED)
    check_transition(JobStatus.RUNNING, JobStatus.FAILED)
    expired = and_(Job.status == JobStatus.RUNNING.value, Job.lease_until < utcnow())
    requeued_ids = session.execute(
        update(Job)
        .where(expired, Job.attempt < max_attempts)
        .values(status=JobStatus.QUEUED.value, lease_until=None, worker=None, published_at=None, progress_step=None)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    failed_ids = session.execute(
        update(Job)
        .where(expired, Job.attempt >= max_attempts)
        .values(
            status=JobStatus.FAILED.value,
            lease_until=None,
            finished_at=utcnow(),
            error_code=ErrorCode.WORKER_LOST.value,
            error_message=f"the worker stopped responding {max_attempts} times",
        )
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    notify.jobs_finished(session, list(failed_ids))
    return list(requeued_ids), list(failed_ids)


# --- reads ----------------------------------------------------------------------------------------------------------
def queue_position(session: Session, job: Job) -> int | None:
    """How many queued jobs of the same queue were accepted before this one (0 = next)."""
    if job.status != JobStatus.QUEUED.value:
        return None
    count = session.execute(
        select(func.count())
        .select_from(Job)
        .where(Job.status == JobStatus.QUEUED.value, Job.queue == job.queue, Job.created_at < job.created_at)
    ).scalar_one()
    return int(count)
