"""The job lifecycle as named transitions, each one fenced conditional UPDATE.

Every transition is ``UPDATE jobs SET status = :to ... WHERE id = :id AND status = :from [AND attempt = :mine]``
and reports whether it won (``rowcount == 1``). Of two workers that both ran a job, only the one whose attempt
still holds the row records a result: exactly one terminal transition and one image set per job. Which transitions
are legal is decided in ``shared.states``; timestamps come from the database clock (``utcnow``). The lease
statements (the fenced move, the heartbeat, giving back, expiry) are ``shared.leases``, shared with trainings.

A caller owns the transaction (``with db.begin() as session:``); these functions only add statements to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, TypeVar, cast

from sqlalchemy import (
    ColumnElement,
    Executable,
    Float,
    String,
    Table,
    and_,
    bindparam,
    func,
    insert,
    literal,
    null,
    or_,
    select,
    update,
)
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from shared import leases, notify
from shared.db import utcnow
from shared.errors import CancelReason, ErrorCode
from shared.models import Client, Job, JobImage, JobTransition
from shared.states import JobStatus, check_transition
from shared.tasks import QUEUE_BATCH, QUEUE_INTERACTIVE
from shared.webhooks import events as webhook_events


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
    PAUSED = "paused"  # its client is paused: it stays queued, unpublished, until the client is resumed


def not_paused() -> ColumnElement[bool]:
    """The job's client is not paused (``illustrations ops pause-client``): its jobs are neither published nor run."""
    return Job.client_id.not_in(select(Client.id).where(Client.paused_at.is_not(None)))


_LEASED = leases.Leased(Job, Job.id, Job.cancel_requested, Job.attempt, "worker")
_JOBS = cast(Table, Job.__table__)
_TRANSITIONS = cast(Table, JobTransition.__table__)
_IMAGES = cast(Table, JobImage.__table__)
_LOGGED = ("job_id", "attempt", "from_status", "to_status", "reason", "worker")


def _log(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Record transitions in the audit trail (same transaction as the UPDATE that made them).

    A Core INSERT on the table: the ORM's bulk INSERT path costs more Python per statement (``bench/claim_ab.py``:
    0.34 ms against 0.23 ms), and these rows need nothing from the ORM."""
    if rows:
        session.execute(insert(_TRANSITIONS), list(rows))


def _move(
    session: Session,
    job_id: str,
    source: JobStatus,
    target: JobStatus,
    *,
    attempt: int | None = None,
    reason: str | None = None,
    where: Sequence[ColumnElement[bool]] = (),
    **values: Any,
) -> bool:
    check_transition(source, target)
    fence = [Job.id == job_id] if attempt is None else leases.held(_LEASED, job_id, attempt)
    rows = leases.move(session, _LEASED, [*fence, *where], source.value, target.value, (Job.attempt, Job.worker),
                       **values)
    if not rows:
        return False
    moved = rows[0]
    _log(session, [{"job_id": job_id, "attempt": moved.attempt, "from_status": source.value,
                    "to_status": target.value, "reason": reason, "worker": moved.worker}])
    if target.is_terminal():
        finished(session, [job_id])
    return True


# --- on-finished hooks: what other areas do when jobs end -----------------------------------------------------------
FinishedHook = Callable[[Session, Sequence[str]], None]
_Hook = TypeVar("_Hook", bound=FinishedHook)
_finished_hooks: dict[str, FinishedHook] = {}


def on_finished(name: str) -> Callable[[_Hook], _Hook]:
    """Register ``fn(session, job_ids)`` as the on-finished hook ``name``: ``finished`` calls it in every transaction
    that makes jobs terminal, in the order hooks were registered (registering a name again replaces it).

    An area that follows finished jobs registers when it is imported and this module never imports it, so the area
    may use the transitions here. The result cache does (``shared.cache``: an entry for a keyed success; followers
    finish with their leader). Every process that finishes jobs imports it: the API (``api.submit``), the workers
    and beat (``worker.celery_app``) and the operator commands (``cli.ops_actions``).
    """

    def register(fn: _Hook) -> _Hook:
        _finished_hooks[name] = fn
        return fn

    return register


def finished_hooks() -> dict[str, FinishedHook]:
    """The registered on-finished hooks by name (a copy)."""
    return dict(_finished_hooks)


def finished(session: Session, job_ids: Sequence[str]) -> None:
    """What every terminal transition does in its own transaction, once per job that became terminal.

    The one place that follows a job ending: it records the webhook event of each job that has a URL (one INSERT …
    SELECT; delivery happens later on a CPU worker), wakes requests waiting with ``Prefer: wait`` (on commit), and
    runs the on-finished hooks (``on_finished``: the result cache). Every path that makes a job terminal
    (``_move``, bulk expiries, a job born finished) calls this.
    """
    if job_ids:
        webhook_events.record_jobs(session, job_ids)
        notify.jobs_finished(session, list(job_ids))
        for hook in list(_finished_hooks.values()):
            hook(session, job_ids)


# --- (new) -> queued ------------------------------------------------------------------------------------------------
def new_job(**columns: Any) -> Job:
    """A job row born ``queued`` (the caller adds it to a session and commits before publishing)."""
    check_transition(None, JobStatus.QUEUED)
    birth = JobTransition(attempt=0, from_status=None, to_status=JobStatus.QUEUED.value)
    # images=[]: a new job has none, and saying so spares the view a SELECT for them.
    return Job(status=JobStatus.QUEUED.value, attempt=0, transitions=[birth], images=[], **columns)


# (attribute, column) of every column of a job row, and the INSERT of new rows (built once; ``insert_new``).
_JOB_COLUMNS = tuple((prop.key, prop.columns[0]) for prop in sa_inspect(Job).column_attrs)
_INSERT_JOBS = insert(_JOBS).returning(_JOBS.c.id, _JOBS.c.created_at)


def insert_new(session: Session, rows: Sequence[Job]) -> None:
    """Write new job rows (``new_job``, ``new_cached_job``) in the caller's transaction.

    Queued rows go in by two Core INSERTs, the jobs (``created_at`` read back by ``RETURNING``) and their birth
    transitions, instead of the ORM's unit of work (``bench/README.md``: 0.95 ms against 1.47 ms for one job and
    its transition). Their objects stay out of the session (transient): they carry every column the view reads
    (column defaults filled in, ``created_at`` from the database); read the row again to change it. Rows born
    finished (cache hits, with their images) go through the ORM.
    """
    orm = [row for row in rows if row.status != JobStatus.QUEUED.value or row.images]
    core = [row for row in rows if row not in orm]
    if orm:
        session.add_all(orm)
        session.flush()
    if not core:
        return
    for row in core:
        state = row.__dict__
        for key, column in _JOB_COLUMNS:
            if key not in state and column.default is not None:
                default: Any = column.default
                setattr(row, key, default.arg(None) if default.is_callable else default.arg)
    given = [(key, column.key) for key, column in _JOB_COLUMNS if any(key in row.__dict__ for row in core)]
    created: dict[str, Any] = dict(session.execute(
        _INSERT_JOBS, [{name: row.__dict__.get(key) for key, name in given} for row in core]
    ).all())
    births = []
    for row in core:
        row.created_at = created[row.id]
        births += [{"job_id": row.id, "attempt": t.attempt, "from_status": t.from_status, "to_status": t.to_status,
                    "reason": t.reason, "worker": t.worker} for t in row.transitions]
    _log(session, births)


# --- (new) -> succeeded: a result cache hit -------------------------------------------------------------------------
def new_cached_job(images: Sequence[StoredImage], **columns: Any) -> Job:
    """A job row born ``succeeded`` (``cached``) that shares the stored images of the job it was answered from: its
    ``job_images`` rows name the same storage keys (reference-counted by ``shared.deletion.jobs``). The caller gives
    ``finished_at`` (the database's clock), adds the row and calls ``finished`` for it in the same transaction."""
    check_transition(None, JobStatus.SUCCEEDED)
    birth = JobTransition(attempt=0, from_status=None, to_status=JobStatus.SUCCEEDED.value, reason="cached")
    return Job(status=JobStatus.SUCCEEDED.value, attempt=0, cached=True, transitions=[birth],
               images=[JobImage(**asdict(image)) for image in images], **columns)


def mark_published(session: Session, job_id: str) -> bool:
    """The outbox mark: the broker has the message of this queued job."""
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
        .values(published_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(session.execute(stmt).rowcount == 1)  # type: ignore[attr-defined]


def unpublished(session: Session, older_than_s: float, limit: int = 500, cap: int = 0) -> list[tuple[str, str]]:
    """Queued jobs to publish now: ``(id, queue)``, fairly interleaved between clients.

    A job is due when it has no publish on record, was created over ``older_than_s`` ago (the API's own publish
    may still be on its way) and its retry backoff (``not_before``) has passed. With ``cap`` > 0 a client has at
    most ``cap`` published jobs waiting in each queue; the rest stay here until it has room. Jobs come out round
    robin between clients (each client's oldest, then each one's second oldest, ...), so one client's backlog does
    not push everybody else's work behind it.
    """
    due = and_(
        Job.status == JobStatus.QUEUED.value,
        Job.published_at.is_(None),
        Job.created_at < utcnow(-older_than_s),
        or_(Job.not_before.is_(None), Job.not_before <= utcnow()),
        not_paused(),
        Job.follows_job_id.is_(None),  # a follower waits for its leader (shared.cache), it is never published
    )
    rank = func.row_number().over(partition_by=(Job.client_id, Job.queue), order_by=(Job.created_at, Job.id))
    candidates = select(Job.id, Job.queue, Job.client_id, Job.created_at, rank.label("rank")).where(due).subquery()
    query = select(candidates.c.id, candidates.c.queue)
    if cap > 0:
        waiting = (
            select(Job.client_id, Job.queue, func.count().label("waiting"))
            .where(Job.status == JobStatus.QUEUED.value, Job.published_at.is_not(None))
            .group_by(Job.client_id, Job.queue)
            .subquery()
        )
        query = query.outerjoin(
            waiting, and_(waiting.c.client_id == candidates.c.client_id, waiting.c.queue == candidates.c.queue)
        ).where(candidates.c.rank + func.coalesce(waiting.c.waiting, 0) <= cap)
    rows = session.execute(query.order_by(candidates.c.rank, candidates.c.created_at).limit(limit))
    return [(row.id, row.queue) for row in rows]


def stale(session: Session, published_before_s: float, limit: int = 500) -> list[tuple[str, str]]:
    """Queued jobs published over ``published_before_s`` ago: their message may be gone (fetched by a worker that
    died before it claimed the job). Publishing again is safe: a twin message is dropped at the claim."""
    rows = session.execute(
        select(Job.id, Job.queue)
        .where(Job.status == JobStatus.QUEUED.value, Job.published_at < utcnow(-published_before_s), not_paused())
        .order_by(Job.published_at)
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
                 reason=code.value, finished_at=utcnow(), error_code=code.value, error_message=message)


def has_room(session: Session, client_id: str, queue: str, cap: int) -> bool:
    """Whether a client may have one more published job waiting in ``queue`` (``cap`` 0: always)."""
    if cap <= 0:
        return True
    waiting = session.execute(
        select(func.count())
        .select_from(Job)
        .where(Job.client_id == client_id, Job.queue == queue, Job.status == JobStatus.QUEUED.value,
               Job.published_at.is_not(None))
    ).scalar_one()
    return int(waiting) < cap


def mark_all_published(session: Session, job_ids: Sequence[str]) -> int:
    """The outbox mark for a batch the relay has just published."""
    if not job_ids:
        return 0
    stmt = (
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED.value)
        .values(published_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


def forget_publishes(session: Session) -> int:
    """The broker lost its data: every queued job counts as unpublished again, so the relay publishes it."""
    stmt = (
        update(Job)
        .where(Job.status == JobStatus.QUEUED.value, Job.published_at.is_not(None))
        .values(published_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(session.execute(stmt).rowcount)  # type: ignore[attr-defined]


# --- queued -> running ----------------------------------------------------------------------------------------------
_CLAIMS: dict[tuple[tuple[Any, ...], bool], Executable] = {}


def _claim_statement(read: tuple[Any, ...], postgresql: bool) -> Executable:
    """The claim, built once per ``read`` and dialect with bound parameters (``claim_job_id``, ``claim_worker``,
    ``claim_lease_s``): building it per job cost ~1 ms of Python before the first byte went to the database
    (``bench/claim_ab.py``: whole claim transaction 2.5 → 1.5 ms).

    On PostgreSQL it also writes the audit row, in the same statement (a data-modifying CTE; SQLite has none, so
    ``started`` adds the row there): one round trip for the claim, the read and the trail.
    """
    key = (read, postgresql)
    if key not in _CLAIMS:
        job_id, worker = bindparam("claim_job_id", type_=String), bindparam("claim_worker", type_=String)
        not_expired = or_(Job.cancel_after.is_(None), Job.cancel_after > utcnow())
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value, not_expired, not_paused())
            .values(
                status=JobStatus.RUNNING.value,
                attempt=Job.attempt + 1,
                lease_until=utcnow(bindparam("claim_lease_s", type_=Float)),
                worker=worker,
                started_at=utcnow(),
                progress_step=0,
                progress_total=Job.request[("params", "steps")].as_integer(),
            )
            .returning(Job.attempt, *read)
            .execution_options(synchronize_session=False)
        )
        if postgresql:
            claimed = stmt.cte("claimed")
            logged = insert(_TRANSITIONS).from_select(list(_LOGGED), select(
                job_id, claimed.c.attempt, literal(JobStatus.QUEUED.value), literal(JobStatus.RUNNING.value),
                null(), worker)).cte("logged")
            _CLAIMS[key] = select(claimed).add_cte(logged)
        else:
            _CLAIMS[key] = stmt
    return _CLAIMS[key]


def started(session: Session, job_id: str, worker: str, lease_s: float,
            read: Sequence[Any] = ()) -> Claim | ClaimRefused:
    """Claim a queued job for a new attempt (attempt + 1, lease until now + ``lease_s``), or say why not.

    The progress total becomes the request's step count. ``read``: columns to return with the claim (``Claim.row``),
    read by the same statement, so a worker claims and reads its job in one round trip.
    """
    check_transition(JobStatus.QUEUED, JobStatus.RUNNING)
    params = {"claim_job_id": job_id, "claim_worker": worker, "claim_lease_s": lease_s}
    postgresql = session.get_bind().dialect.name == "postgresql"
    row = session.execute(_claim_statement(tuple(read), postgresql), params).one_or_none()
    if row is not None and not postgresql:
        _log(session, [{"job_id": job_id, "attempt": row[0], "from_status": JobStatus.QUEUED.value,
                        "to_status": JobStatus.RUNNING.value, "reason": None, "worker": worker}])
    if row is not None:
        return Claim(job_id, row[0], row if read else None)
    status = session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()
    if status is None:
        return ClaimRefused.MISSING
    if JobStatus(status).is_terminal():
        return ClaimRefused.TERMINAL
    if status == JobStatus.QUEUED.value and session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED.value, ~not_paused())
        .values(published_at=None).execution_options(synchronize_session=False)
    ).rowcount:  # type: ignore[attr-defined]
        return ClaimRefused.PAUSED  # the relay publishes it again once its client is resumed
    if status == JobStatus.QUEUED.value and canceled(session, job_id, CancelReason.DEADLINE):
        return ClaimRefused.DEADLINE  # the only other reason a queued job is not claimed: cancel_after passed
    return ClaimRefused.LEASED


def heartbeat(session: Session, claim: Claim, lease_s: float, step: int | None = None) -> bool | None:
    """Renew the lease (and record progress). ``None``: the attempt lost the job; else whether cancel was asked."""
    return leases.renew(session, _LEASED, claim.job_id, claim.attempt, lease_s, progress_step=step)


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
    if not _move(session, claim.job_id, JobStatus.RUNNING, JobStatus.SUCCEEDED, attempt=claim.attempt,
                 **values):
        return False
    if images:  # a Core INSERT on the table: neither the unit of work nor the ORM's bulk path (see _log)
        session.execute(insert(_IMAGES), [{"job_id": claim.job_id, **asdict(image)} for image in images])
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
    values = leases.ended(code.value, message)
    if timings is not None:
        values["timings"] = timings
    if model is not None:
        values["model"] = model
    return _move(session, claim.job_id, JobStatus.RUNNING, JobStatus.FAILED, attempt=claim.attempt,
                 reason=code.value, **values)


def failed_on_worker(session: Session, job_id: str, worker_prefix: str, code: ErrorCode, message: str) -> bool:
    """Fail a running job whose attempt runs on a worker named ``worker_prefix...`` (the attempt is not known:
    its process was killed, e.g. at the hard time limit, and the main process of that worker reports it)."""
    return _move(session, job_id, JobStatus.RUNNING, JobStatus.FAILED,
                 where=[leases.on_worker(_LEASED, worker_prefix)], **leases.ended(code.value, message))


def canceled(session: Session, job_id: str, reason: CancelReason, claim: Claim | None = None, *,
             message: str | None = None) -> bool:
    """Cancel a queued job (no claim), or a running one by the attempt that holds it."""
    values = leases.ended(reason.value, message or _CANCEL_MESSAGES[reason])
    if claim is None:
        return _move(session, job_id, JobStatus.QUEUED, JobStatus.CANCELED, reason=reason.value, **values)
    return _move(session, job_id, JobStatus.RUNNING, JobStatus.CANCELED, attempt=claim.attempt, reason=reason.value,
                 **values)


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
def requeued(session: Session, claim: Claim, reason: str, delay_s: float = 0.0) -> bool:
    """Give the job back (worker stopping, transient fault); the relay publishes it again after ``delay_s``."""
    return _move(session, claim.job_id, JobStatus.RUNNING, JobStatus.QUEUED, attempt=claim.attempt, reason=reason,
                 **leases.released(progress_step=None, not_before=utcnow(delay_s) if delay_s > 0 else None))


def expire_leases(session: Session, max_attempts: int) -> tuple[list[str], list[str]]:
    """Running jobs whose lease ran out: back to queued, or ``failed``/``worker_lost`` after the last attempt."""
    check_transition(JobStatus.RUNNING, JobStatus.QUEUED)
    check_transition(JobStatus.RUNNING, JobStatus.FAILED)
    requeued_rows, failed_rows = leases.expire(session, _LEASED, max_attempts, (Job.id, Job.attempt, Job.worker),
                                               requeue={"progress_step": None, "not_before": None}, fail={})
    _log(session, [{"job_id": row.id, "attempt": row.attempt, "from_status": JobStatus.RUNNING.value,
                    "to_status": JobStatus.QUEUED.value, "reason": "lease_expired", "worker": None}
                   for row in requeued_rows])
    _log(session, [{"job_id": row.id, "attempt": row.attempt, "from_status": JobStatus.RUNNING.value,
                    "to_status": JobStatus.FAILED.value, "reason": ErrorCode.WORKER_LOST.value,
                    "worker": row.worker} for row in failed_rows])
    finished(session, [row.id for row in failed_rows])
    return [row.id for row in requeued_rows], [row.id for row in failed_rows]


# --- queued -> canceled (deadline) ----------------------------------------------------------------------------------
def expire_deadlines(session: Session, limit: int = 1000) -> list[str]:
    """Queued jobs whose ``cancel_after`` passed before any worker started them end ``canceled``/``deadline``."""
    check_transition(JobStatus.QUEUED, JobStatus.CANCELED)
    due = (
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED.value, Job.cancel_after.is_not(None), Job.cancel_after <= utcnow())
        .limit(limit)
        .scalar_subquery()
    )
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(due), Job.status == JobStatus.QUEUED.value)
        .values(
            status=JobStatus.CANCELED.value,
            finished_at=utcnow(),
            lease_until=None,
            error_code=CancelReason.DEADLINE.value,
            error_message=_CANCEL_MESSAGES[CancelReason.DEADLINE],
        )
        .returning(Job.id, Job.attempt)
        .execution_options(synchronize_session=False)
    ).all()
    _log(session, [{"job_id": row.id, "attempt": row.attempt, "from_status": JobStatus.QUEUED.value,
                    "to_status": JobStatus.CANCELED.value, "reason": CancelReason.DEADLINE.value, "worker": None}
                   for row in rows])
    finished(session, [row.id for row in rows])
    return [row.id for row in rows]


# --- reads ----------------------------------------------------------------------------------------------------------
def queue_position(session: Session, job: Job) -> int | None:
    """How many queued jobs a worker takes before this one (0 = next); None unless queued.

    Interactive work goes strictly first: an interactive job counts the interactive jobs accepted before it; a
    batch job counts every queued interactive job and the batch jobs accepted before it. (Approximate under the
    per-client cap, which may hold a client's jobs back.)
    """
    if job.status != JobStatus.QUEUED.value:
        return None
    ahead = and_(Job.queue == job.queue, Job.created_at < job.created_at)
    if job.queue == QUEUE_BATCH:
        ahead = or_(ahead, Job.queue == QUEUE_INTERACTIVE)
    count = session.execute(
        select(func.count()).select_from(Job).where(Job.status == JobStatus.QUEUED.value, ahead)
    ).scalar_one()
    return int(count)


def transitions(session: Session, job_id: str) -> list[tuple[str | None, str, int, str | None]]:
    """The job's audit trail, oldest first: ``(from, to, attempt, reason)``."""
    rows = session.execute(
        select(JobTransition.from_status, JobTransition.to_status, JobTransition.attempt, JobTransition.reason)
        .where(JobTransition.job_id == job_id)
        .order_by(JobTransition.id)
    )
    return [(row.from_status, row.to_status, row.attempt, row.reason) for row in rows]


# --- followers (in-flight dedupe, ``shared.cache``): queued jobs that finish with their leader ---------------------
def _followers_moved(session: Session, leader_id: str, target: JobStatus, reason: str,
                     **values: Any) -> list[str]:
    check_transition(JobStatus.QUEUED, target)
    rows = session.execute(
        update(Job)
        .where(Job.follows_job_id == leader_id, Job.status == JobStatus.QUEUED.value)
        .values(status=target.value, finished_at=utcnow(), **values)
        .returning(Job.id, Job.attempt)
        .execution_options(synchronize_session=False)
    ).all()
    _log(session, [{"job_id": row.id, "attempt": row.attempt, "from_status": JobStatus.QUEUED.value,
                    "to_status": target.value, "reason": reason, "worker": None} for row in rows])
    return [row.id for row in rows]


def followers_succeeded(session: Session, leader_id: str, model: dict[str, Any] | None,
                        steps: int | None) -> list[str]:
    """The leader succeeded: its queued followers succeed too (``cached``), sharing its stored images."""
    ids = _followers_moved(session, leader_id, JobStatus.SUCCEEDED, "follower", cached=True, model=model,
                           progress_step=steps, progress_total=steps)
    if ids:
        shared = (
            select(Job.id, JobImage.index, JobImage.storage_key, JobImage.content_type, JobImage.width,
                   JobImage.height, JobImage.sha256, JobImage.size_bytes)
            .join(JobImage, JobImage.job_id == leader_id)
            .where(Job.id.in_(ids))
        )
        columns = ["job_id", "index", "storage_key", "content_type", "width", "height", "sha256", "size_bytes"]
        session.execute(insert(JobImage).from_select(columns, shared))
        finished(session, ids)
    return ids


def followers_failed(session: Session, leader_id: str, code: str, message: str | None) -> list[str]:
    """The leader failed for a reason that is the request's (not a lost worker): its followers fail alike."""
    ids = _followers_moved(session, leader_id, JobStatus.FAILED, code, error_code=code, error_message=message)
    finished(session, ids)
    return ids


def followers_released(session: Session, leader_ids: Sequence[str]) -> list[str]:
    """The leader was canceled, lost or deleted: its followers become ordinary queued jobs (no state change); the
    outbox relay publishes them."""
    if not leader_ids:
        return []
    rows = session.execute(
        update(Job)
        .where(Job.follows_job_id.in_(leader_ids), Job.status == JobStatus.QUEUED.value)
        .values(follows_job_id=None, published_at=None)
        .returning(Job.id)
        .execution_options(synchronize_session=False)
    ).scalars()
    return list(rows)
