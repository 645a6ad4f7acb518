"""A style version's training as a job: named transitions, each one fenced conditional UPDATE of its row.

A trained version is its own job (``style_versions.job_id``, the only thing its queue message carries). Its
``status`` moves as the contract says (``queued → running → ready | failed | canceled``), with the same guarantees as
a generation job (``shared.jobs``), by the same lease statements (``shared.leases``): a claim takes a lease renewed
by a heartbeat; every later write of the attempt is fenced by ``attempt``; an expired lease puts the training back in
the queue, where the next attempt resumes from the last checkpoint (``failed``/``worker_lost`` once ``max_attempts``
attempts were lost). A SIGTERM'd worker gives the training back itself (``requeued``), which is not a lost attempt
(``requeues`` counts those). A version that becomes ready becomes active, unless a newer version is already active; a
failed or canceled one leaves the active as it was.

| from    | to                         | when                                                                       |
|---------|----------------------------|----------------------------------------------------------------------------|
| (new)   | queued                     | accepted (on the prepare queue: its pictures are normalised there first)    |
| queued  | running                    | a training worker claims it                                                |
| queued  | canceled                   | client cancel, user deleted                                                |
| queued  | failed                     | the preparation step could not get a picture                               |
| running | ready / failed / canceled  | the attempt holding the lease finishes                                     |
| running | queued                     | lease expired (worker died), worker stopping (SIGTERM), transient fault    |

A caller owns the transaction (``with db.begin() as session:``); these functions only add statements to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import ColumnElement, case, func, or_, select, update
from sqlalchemy.orm import Session

from shared import leases, tasks
from shared.db import utcnow
from shared.errors import CancelReason, ErrorCode
from shared.models import Style, StyleVersion, new_id
from shared.styles import next_version, version_prefix
from shared.webhooks import events as webhook_events

QUEUED, RUNNING, READY, FAILED, CANCELED = "queued", "running", "ready", "failed", "canceled"
TERMINAL: Final = frozenset({READY, FAILED, CANCELED})
TRANSITIONS: Final = frozenset({
    (QUEUED, RUNNING), (QUEUED, CANCELED), (QUEUED, FAILED),
    (RUNNING, READY), (RUNNING, FAILED), (RUNNING, CANCELED), (RUNNING, QUEUED),
})
CANCEL_MESSAGES: Final = {
    CancelReason.CANCELED_BY_CLIENT.value: "canceled by the client",
    CancelReason.USER_DELETED.value: "pictures of its training set belonged to a deleted user",
}


# --- Storage layout ------------------------------------------------------------------------------------------------
def image_key(style_id: str, version: int, index: int) -> str:
    return f"{version_prefix(style_id, version)}images/{index}.png"


def checkpoint_key(style_id: str, version: int) -> str:
    return f"{version_prefix(style_id, version)}checkpoint.safetensors"


# --- (new) -> queued ------------------------------------------------------------------------------------------------
def new_training(session: Session, client_id: str, name: str, params: dict[str, Any], *, base_profile: str,
                 queue: str, webhook_url: str | None = None) -> StyleVersion:
    """The next version of style ``name`` (created if absent), queued for training with ``params`` (complete:
    seed drawn, alpha set). The caller adds its training pictures, commits, then publishes ``job_id``."""
    style, number = next_version(session, client_id, name)
    row = StyleVersion(style_id=style.id, version=number, status=QUEUED, source="training", base_profile=base_profile,
                       params=params, rank=params["rank"], alpha=params["alpha"], job_id=new_id(), queue=queue,
                       progress_step=0, progress_total=params["steps"], webhook_url=webhook_url)
    session.add(row)
    session.flush()
    return row


# --- Claims ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainingClaim:
    """Proof that this attempt holds a training; every later transition of the attempt is fenced by it."""

    job_id: str
    style_id: str
    version: int
    attempt: int
    params: dict[str, Any] = field(compare=False)
    checkpoint_step: int | None = None
    requeues: int = 0  # give-backs by stopping workers so far (not lost attempts)


def _check(source: str, target: str) -> None:
    if (source, target) not in TRANSITIONS:
        raise ValueError(f"style version transition {source} -> {target} is not allowed")


# Lost attempts: SIGTERM give-backs (``requeues``) do not count against ``max_attempts``.
_LEASED = leases.Leased(StyleVersion, StyleVersion.job_id, StyleVersion.cancel_reason,
                        StyleVersion.attempt - StyleVersion.requeues, "training worker")


def _move(session: Session, where: Sequence[ColumnElement[bool]], source: str, target: str, **values: Any) -> bool:
    _check(source, target)
    moved = leases.move(session, _LEASED, where, source, target, (StyleVersion.job_id,), **values)
    if target in TERMINAL:
        _ended(session, [str(row.job_id) for row in moved if row.job_id is not None])
    return len(moved) == 1


def _ended(session: Session, job_ids: Sequence[str]) -> None:
    """What every terminal transition of a training does in its transaction: the ``style.ready`` /
    ``style.failed`` webhook event of each version that has a URL (one INSERT … SELECT)."""
    webhook_events.record_styles(session, job_ids)


def _mine(claim: TrainingClaim) -> list[ColumnElement[bool]]:
    return leases.held(_LEASED, claim.job_id, claim.attempt)


def claim(session: Session, job_id: str, worker: str, lease_s: float) -> TrainingClaim | str:
    """Claim a queued training for a new attempt, or say why not (``missing``, ``terminal``, ``leased``,
    ``preparing``). The progress starts at the checkpoint's step: a resumed training continues its count."""
    _check(QUEUED, RUNNING)
    row = session.execute(
        update(StyleVersion)
        .where(StyleVersion.job_id == job_id, StyleVersion.status == QUEUED,
               StyleVersion.queue == tasks.QUEUE_TRAINING)
        .values(status=RUNNING, attempt=StyleVersion.attempt + 1, lease_until=utcnow(lease_s), worker=worker,
                started_at=func.coalesce(StyleVersion.started_at, utcnow()),
                progress_step=func.coalesce(StyleVersion.checkpoint_step, 0))
        .returning(StyleVersion.style_id, StyleVersion.version, StyleVersion.attempt, StyleVersion.params,
                   StyleVersion.checkpoint_step, StyleVersion.requeues)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is not None:
        return TrainingClaim(job_id, row.style_id, row.version, row.attempt, dict(row.params or {}),
                             row.checkpoint_step, row.requeues)
    current = session.execute(
        select(StyleVersion.status, StyleVersion.queue).where(StyleVersion.job_id == job_id)
    ).one_or_none()
    if current is None:
        return "missing"
    if current.status in TERMINAL:
        return "terminal"
    return "preparing" if current.status == QUEUED else "leased"


def heartbeat(session: Session, claim: TrainingClaim, lease_s: float, *, step: int | None = None,
              loss: float | None = None) -> bool | None:
    """Renew the lease (and record progress). ``None``: the attempt lost the training; else whether to cancel."""
    return leases.renew(session, _LEASED, claim.job_id, claim.attempt, lease_s, progress_step=step, loss=loss)


def checkpointed(session: Session, claim: TrainingClaim, step: int) -> bool:
    """The checkpoint of ``step`` is in storage: a later attempt resumes from it."""
    result = session.execute(
        update(StyleVersion).where(*_mine(claim), StyleVersion.status == RUNNING)
        .values(checkpoint_step=step, progress_step=step)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def requeued(session: Session, claim: TrainingClaim, *, stopping: bool) -> bool:
    """Give the training back (``stopping``: the worker got SIGTERM, not a lost attempt); the relay or the caller
    publishes it again."""
    extra = {"requeues": StyleVersion.requeues + 1} if stopping else {}
    return _move(session, _mine(claim), RUNNING, QUEUED, **leases.released(**extra))


def ready(session: Session, claim: TrainingClaim, *, storage_key: str, sha256: str, size_bytes: int, rank: int,
          alpha: float, base_profile: str, loss: float | None) -> bool:
    """Register the trained LoRA and make it active (unless a newer version already is), if this attempt holds it."""
    moved = _move(session, _mine(claim), RUNNING, READY, storage_key=storage_key, sha256=sha256,
                  size_bytes=size_bytes, rank=rank, alpha=alpha, base_profile=base_profile, loss=loss,
                  finished_at=utcnow(), lease_until=None, progress_step=StyleVersion.progress_total,
                  checkpoint_step=None)
    if moved:
        session.execute(
            update(Style).where(Style.id == claim.style_id,
                                or_(Style.active_version.is_(None), Style.active_version < claim.version))
            .values(active_version=claim.version).execution_options(synchronize_session=False)
        )
    return moved


def failed(session: Session, claim: TrainingClaim, code: ErrorCode, message: str) -> bool:
    return _move(session, _mine(claim), RUNNING, FAILED, **leases.ended(code.value, message, checkpoint_step=None))


def failed_on_worker(session: Session, job_id: str, worker_prefix: str, code: ErrorCode, message: str) -> bool:
    """Fail a running training whose attempt runs on a worker named ``worker_prefix...`` (its process was killed,
    e.g. at the hard time limit, and the main process of that worker reports it)."""
    return _move(session, [StyleVersion.job_id == job_id, leases.on_worker(_LEASED, worker_prefix)], RUNNING, FAILED,
                 **leases.ended(code.value, message, checkpoint_step=None))


def canceled_running(session: Session, claim: TrainingClaim) -> bool:
    """The attempt saw the cancel flag and stopped: canceled, with the reason the flag gave."""
    reason = func.coalesce(StyleVersion.cancel_reason, CancelReason.CANCELED_BY_CLIENT.value)
    message = case(*[(StyleVersion.cancel_reason == code, text) for code, text in CANCEL_MESSAGES.items()],
                   else_=CANCEL_MESSAGES[CancelReason.CANCELED_BY_CLIENT.value])
    return _move(session, _mine(claim), RUNNING, CANCELED, **leases.ended(reason, message, checkpoint_step=None))


def cancel(session: Session, style_id: str, version: int, reason: CancelReason) -> str:
    """Cancel a version: ``canceled`` (it was queued), ``flagged`` (running: it stops at its next step) or
    ``unchanged`` (finished, or an imported version)."""
    key = [StyleVersion.style_id == style_id, StyleVersion.version == version, StyleVersion.job_id.is_not(None)]
    if _move(session, key, QUEUED, CANCELED, error_code=reason.value, error_message=CANCEL_MESSAGES[reason.value],
             finished_at=utcnow(), cancel_reason=reason.value):
        return "canceled"
    flagged = session.execute(
        update(StyleVersion).where(*key, StyleVersion.status == RUNNING)
        .values(cancel_reason=func.coalesce(StyleVersion.cancel_reason, reason.value))
        .execution_options(synchronize_session=False)
    )
    return "flagged" if flagged.rowcount == 1 else "unchanged"  # type: ignore[attr-defined]


# --- Preparation (queued, on the prepare queue) ----------------------------------------------------------------------
def prepared(session: Session, job_id: str) -> bool:
    """Every picture is in storage: hand the training to the training queue (the caller publishes after commit)."""
    result = session.execute(
        update(StyleVersion)
        .where(StyleVersion.job_id == job_id, StyleVersion.status == QUEUED,
               StyleVersion.queue == tasks.QUEUE_PREPARE)
        .values(queue=tasks.QUEUE_TRAINING, published_at=None).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def preparation_failed(session: Session, job_id: str, code: ErrorCode, message: str) -> bool:
    return _move(session, [StyleVersion.job_id == job_id, StyleVersion.queue == tasks.QUEUE_PREPARE], QUEUED,
                 FAILED, error_code=code.value, error_message=message, finished_at=utcnow())


# --- Outbox and leases ---------------------------------------------------------------------------------------------
def mark_published(session: Session, job_id: str) -> bool:
    result = session.execute(
        update(StyleVersion).where(StyleVersion.job_id == job_id, StyleVersion.status == QUEUED)
        .values(published_at=utcnow()).execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def unpublished(session: Session, older_than_s: float, limit: int = 100) -> list[tuple[str, str]]:
    """Queued trainings with no publish on record, created (or given back) over ``older_than_s`` ago."""
    rows = session.execute(
        select(StyleVersion.job_id, StyleVersion.queue)
        .where(StyleVersion.status == QUEUED, StyleVersion.job_id.is_not(None), StyleVersion.queue.is_not(None),
               StyleVersion.published_at.is_(None), StyleVersion.created_at < utcnow(-older_than_s))
        .order_by(StyleVersion.created_at).limit(limit)
    )
    return [(str(row.job_id), str(row.queue)) for row in rows]


def expire_leases(session: Session, max_attempts: int) -> tuple[list[str], list[str]]:
    """Running trainings whose lease ran out: back to the queue (they resume from their checkpoint), or
    ``failed``/``worker_lost`` once ``max_attempts`` attempts were lost (SIGTERM give-backs do not count)."""
    _check(RUNNING, QUEUED)
    _check(RUNNING, FAILED)
    requeued_rows, failed_rows = leases.expire(session, _LEASED, max_attempts, (StyleVersion.job_id,), requeue={},
                                               fail={"checkpoint_step": None})
    failed_ids = [str(row.job_id) for row in failed_rows]
    _ended(session, failed_ids)
    return [str(row.job_id) for row in requeued_rows], failed_ids
