"""Webhook events: recorded with the terminal transition, frozen at first delivery, retried on a schedule.

An event's life: ``pending`` (due at ``next_attempt_at``; ``lease_until`` while a delivery of it is in the webhooks
queue) → ``delivered`` (2xx), ``stopped`` (410: the receiver asked for no more) or ``failed`` (the schedule ran
out). A re-send (``POST /v1/webhooks/deliveries/{id}/retry``) makes any event ``pending`` again, same id.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import ColumnElement, case, delete, exists, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.models import Batch, Client, Job, Style, StyleVersion, TrainingImage, WebhookAttempt, WebhookEvent
from shared.views import job_out, style_version_out

PENDING, DELIVERED, STOPPED, FAILED = "pending", "delivered", "stopped", "failed"
STATES: Final = (PENDING, DELIVERED, STOPPED, FAILED)
JOB_STATES: Final = ("succeeded", "failed", "canceled")  # illustration.<status>
STYLE_STATES: Final = ("ready", "failed")  # style.<status> (a canceled training sends nothing)
ERROR_MAX_CHARS: Final = 500


def _event_id(column: Any) -> ColumnElement[str]:
    """``msg_`` + the job id without dashes: one event per job (one terminal transition), the same id on every
    attempt and re-send."""
    return literal("msg_") + func.replace(column, "-", "")


# --- Recording (inside the terminal transition's transaction: one statement) ------------------------------------
def record_jobs(session: Session, job_ids: Sequence[str]) -> None:
    """An event for each of these (just terminal) jobs that has a URL: the job's, its batch's, else its client's.

    One INSERT … SELECT: it runs inside a GPU worker's finish transaction, so it must stay one cheap statement
    (the body is rendered later, by the CPU worker). A job without any URL inserts nothing.
    """
    if not job_ids:
        return
    url = func.coalesce(Job.webhook_url, Batch.webhook_url, Client.webhook_url)
    event_id = _event_id(Job.id)
    rows = (
        select(event_id, Job.client_id, Job.user_id, Job.id, literal("illustration.") + Job.status, url, utcnow())
        .select_from(Job)
        .join(Client, Client.id == Job.client_id)
        .outerjoin(Batch, Batch.id == Job.batch_id)
        .where(Job.id.in_(list(job_ids)), Job.status.in_(JOB_STATES), url.is_not(None),
               ~exists().where(WebhookEvent.id == event_id))
    )
    session.execute(insert(WebhookEvent).from_select(
        ["id", "client_id", "user_id", "job_id", "type", "url", "next_attempt_at"], rows))


def record_styles(session: Session, job_ids: Sequence[str]) -> None:
    """An event for each of these (just terminal) style versions, by training job id: ``style.ready`` or
    ``style.failed``, to the version's URL, else its client's."""
    if not job_ids:
        return
    url = func.coalesce(StyleVersion.webhook_url, Client.webhook_url)
    event_id = _event_id(StyleVersion.job_id)
    kind = case((StyleVersion.status == "ready", "style.ready"), else_="style.failed")
    rows = (
        select(event_id, Style.client_id, StyleVersion.style_id, StyleVersion.version, kind, url, utcnow())
        .select_from(StyleVersion)
        .join(Style, Style.id == StyleVersion.style_id)
        .join(Client, Client.id == Style.client_id)
        .where(StyleVersion.job_id.in_(list(job_ids)), StyleVersion.status.in_(STYLE_STATES), url.is_not(None),
               ~exists().where(WebhookEvent.id == event_id))
    )
    session.execute(insert(WebhookEvent).from_select(
        ["id", "client_id", "style_id", "style_version", "type", "url", "next_attempt_at"], rows))


# --- The body (rendered once, at the first delivery, then frozen) ------------------------------------------------
def timestamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def render(session: Session, event: WebhookEvent, base: str) -> str | None:
    """``{"type", "timestamp", "data"}`` with ``data`` the job as ``GET /v1/illustrations/{id}`` returns it, or the
    style version as ``GET /v1/styles/{name}`` lists it (plus the style's ``name``). None: it no longer exists."""
    data: dict[str, Any]
    if event.job_id is not None:
        job = session.get(Job, event.job_id)
        if job is None:
            return None
        data = job_out(job, base).model_dump(mode="json")
    else:
        row = session.get(StyleVersion, (event.style_id, event.style_version))
        if row is None:
            return None
        images = session.execute(
            select(func.count()).select_from(TrainingImage)
            .where(TrainingImage.style_id == row.style_id, TrainingImage.version == row.version)
        ).scalar_one()
        data = {"name": row.style.name, **style_version_out(row, int(images)).model_dump(mode="json")}
    body = {"type": event.type, "timestamp": timestamp(event.created_at), "data": data}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


# --- Dispatch (beat) ----------------------------------------------------------------------------------------------
def claim_due(session: Session, lease_s: float, limit: int) -> list[str]:
    """Due events, oldest due first, claimed for ``lease_s`` (``FOR UPDATE SKIP LOCKED``: two beats, or beat and a
    re-send, never take the same row). The caller sends their ids to the webhooks queue after the commit."""
    due = (
        select(WebhookEvent.id)
        .where(WebhookEvent.state == PENDING, WebhookEvent.next_attempt_at <= utcnow(),
               or_(WebhookEvent.lease_until.is_(None), WebhookEvent.lease_until < utcnow()))
        .order_by(WebhookEvent.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = session.execute(
        update(WebhookEvent).where(WebhookEvent.id.in_(due.scalar_subquery()))
        .values(lease_until=utcnow(lease_s)).returning(WebhookEvent.id)
        .execution_options(synchronize_session=False)
    ).scalars().all()
    return [str(i) for i in ids]


def release(session: Session, event_ids: Sequence[str]) -> None:
    """Their send to the queue failed: due again at the next round."""
    if event_ids:
        session.execute(update(WebhookEvent).where(WebhookEvent.id.in_(list(event_ids)))
                        .values(lease_until=None).execution_options(synchronize_session=False))


def resend(session: Session, event_id: str, lease_s: float) -> bool:
    """Make the event due now, whatever its state, and claim it for the caller's send (same ``webhook-id``)."""
    result = session.execute(
        update(WebhookEvent).where(WebhookEvent.id == event_id)
        .values(state=PENDING, next_attempt_at=utcnow(), lease_until=utcnow(lease_s), finished_at=None)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def backlog(session: Session) -> int:
    """Events due now and not delivered (what the ``WebhookBacklog`` alert watches)."""
    return int(session.execute(
        select(func.count()).select_from(WebhookEvent)
        .where(WebhookEvent.state == PENDING, WebhookEvent.next_attempt_at <= utcnow())
    ).scalar_one())


# --- An attempt's outcome -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """What one attempt got: a status code (None: no answer), the receiver's ``Retry-After`` in seconds, an error."""

    status_code: int | None
    latency_ms: float
    retry_after_s: float | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def next_wait(schedule: Sequence[float], attempt: int, jitter: float, retry_after_s: float | None,
              retry_after_max_s: float) -> float | None:
    """Seconds before the next try after failed attempt number ``attempt`` (1-based); None: no more tries.

    The schedule's step, stretched or shrunk by up to ``jitter``; a receiver's ``Retry-After`` (capped at
    ``retry_after_max_s``) is honoured when it asks for longer.
    """
    if attempt > len(schedule):
        return None
    wait = schedule[attempt - 1] * (1 + random.uniform(-jitter, jitter))  # noqa: S311 - jitter, not a secret
    if retry_after_s is not None:
        wait = max(wait, min(retry_after_s, retry_after_max_s))
    return max(0.0, wait)


def attempted(session: Session, event_id: str, attempt: int, answer: Answer, wait_s: float | None) -> str:
    """Log the attempt and move the event: delivered (2xx), stopped (410), retried after ``wait_s``, or failed
    (``wait_s`` None). Fenced on the attempt count, so a stale twin delivery only adds its log row."""
    error = answer.error[:ERROR_MAX_CHARS] if answer.error else None
    session.execute(insert(WebhookAttempt).values(event_id=event_id, attempt=attempt,
                                                  status_code=answer.status_code,
                                                  latency_ms=round(answer.latency_ms, 1), error=error))
    values: dict[str, Any] = {"attempts": attempt, "lease_until": None}
    if answer.delivered:
        state = DELIVERED
        values.update(delivered_at=utcnow(), finished_at=utcnow(), next_attempt_at=None)
    elif answer.status_code == 410:
        state = STOPPED
        values.update(finished_at=utcnow(), next_attempt_at=None)
    elif wait_s is None:
        state = FAILED
        values.update(finished_at=utcnow(), next_attempt_at=None)
    else:
        state = PENDING
        values.update(next_attempt_at=utcnow(wait_s))
    session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id == event_id, WebhookEvent.state == PENDING, WebhookEvent.attempts == attempt - 1)
        .values(state=state, **values).execution_options(synchronize_session=False)
    )
    return state


def gone(session: Session, event_id: str) -> None:
    """Its job or style version no longer exists (deleted): nothing to send, ever."""
    session.execute(
        update(WebhookEvent).where(WebhookEvent.id == event_id, WebhookEvent.state == PENDING)
        .values(state=FAILED, finished_at=utcnow(), next_attempt_at=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )


# --- Reads and deletion -------------------------------------------------------------------------------------------
def attempts_of(session: Session, event_ids: Sequence[str]) -> dict[str, list[WebhookAttempt]]:
    found: dict[str, list[WebhookAttempt]] = {event_id: [] for event_id in event_ids}
    if event_ids:
        for row in session.execute(
            select(WebhookAttempt).where(WebhookAttempt.event_id.in_(list(event_ids)))
            .order_by(WebhookAttempt.event_id, WebhookAttempt.id)
        ).scalars():
            found[row.event_id].append(row)
    return found


def forget_user(session: Session, client_id: str, user_id: str) -> int:
    """Remove a user's events (and, by cascade, their attempts): their bodies hold the user's jobs."""
    ids = session.execute(
        select(WebhookEvent.id).where(WebhookEvent.client_id == client_id, WebhookEvent.user_id == user_id)
    ).scalars().all()
    if not ids:
        return 0
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.event_id.in_(ids))
                    .execution_options(synchronize_session=False))
    session.execute(delete(WebhookEvent).where(WebhookEvent.id.in_(ids)).execution_options(synchronize_session=False))
    return len(ids)

