"""Idempotency keys: a client's retry of a request it already made gets the first answer, not a second job.

The contract: an ``Idempotency-Key`` (at most 255 characters, per client, kept >= 24 h); the same key with the same
request gets the original status and body back; the same key with another request is a 422; the same key while
the first request is still being processed is a 409.

One row per (client, key), in PostgreSQL like the jobs it protects:

1. ``begin`` inserts the row holding the key (``holder``, ``locked_until``) in a transaction of its own, so a
   concurrent retry sees it at once; an existing row answers with a replay, a mismatch or "busy".
2. The request runs. A route that creates something calls ``complete`` inside its own transaction, so the job and
   the recorded answer commit together (a crash in between leaves neither). Otherwise the answer is recorded
   right after.
3. A request that created nothing (an error answer) ``release``\\ s the key, so the client can fix and retry.
   A request that died holding it frees it after ``idempotency_lock_s``.

Plain SQLAlchemy on both databases (``INSERT ... ON CONFLICT DO NOTHING`` exists on PostgreSQL and SQLite), so it
serves any route; ``api.idempotency`` is the Flask side. Libraries looked at: none of the Flask idempotency
packages on PyPI keeps the record in the application's own database transaction, which is the point here.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.models import IdempotencyKey

KEY_MAX_CHARS = 255


@dataclass(frozen=True)
class Held:
    """This request holds the key: it must ``complete`` or ``release`` it."""

    client_id: str
    key: str
    holder: str


@dataclass(frozen=True)
class Replay:
    """The key was used for the same request, which finished: answer what it answered."""

    status: int
    headers: dict[str, str]
    body: str


class Busy:
    """The first request with this key is still being processed (409)."""


class Mismatch:
    """The key was used for another request (422)."""


Outcome = Held | Replay | Busy | Mismatch


def request_hash(method: str, route: str, body: Any) -> str:
    """SHA-256 of the method, the route and the body (JSON-serialisable, canonicalised: key order and spacing
    do not make two requests different)."""
    canonical = json.dumps([method.upper(), route, body], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _insert(session: Session) -> Any:
    return (postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert)(IdempotencyKey)


def begin(session: Session, client_id: str, key: str, digest: str, *, lock_s: float, ttl_s: float) -> Outcome:
    """Take the key for this request, or say what to answer instead."""
    holder = str(uuid.uuid4())
    inserted = session.execute(
        _insert(session)
        .values(client_id=client_id, key=key, request_hash=digest, holder=holder, locked_until=utcnow(lock_s))
        .on_conflict_do_nothing(index_elements=["client_id", "key"])
    )
    if inserted.rowcount == 1:  # type: ignore[attr-defined]
        return Held(client_id, key, holder)
    row = session.execute(
        select(
            IdempotencyKey.request_hash,
            IdempotencyKey.holder,
            IdempotencyKey.created_at,
            IdempotencyKey.response_status,
            IdempotencyKey.response_headers,
            IdempotencyKey.response_body,
            (IdempotencyKey.created_at < utcnow(-ttl_s)).label("expired"),
            (IdempotencyKey.locked_until < utcnow()).label("abandoned"),
        ).where(IdempotencyKey.client_id == client_id, IdempotencyKey.key == key)
    ).one_or_none()
    if row is None:  # purged between the two statements: the next try inserts
        return Busy()
    this = and_(IdempotencyKey.client_id == client_id, IdempotencyKey.key == key)
    if row.expired:  # past retention: as if it had never been used
        return _take_over(session, this, IdempotencyKey.created_at == row.created_at, client_id, key, digest, lock_s,
                          new_record=True)
    if row.request_hash != digest:
        return Mismatch()
    if row.response_status is not None:
        return Replay(int(row.response_status), dict(row.response_headers or {}), row.response_body or "")
    if row.abandoned:  # the request that held it died
        fence = IdempotencyKey.holder == row.holder if row.holder is not None else IdempotencyKey.holder.is_(None)
        return _take_over(session, this, fence, client_id, key, digest, lock_s, new_record=False)
    return Busy()


def _take_over(session: Session, this: Any, fence: Any, client_id: str, key: str, digest: str, lock_s: float, *,
               new_record: bool) -> Outcome:
    holder = str(uuid.uuid4())
    values: dict[str, Any] = {"request_hash": digest, "holder": holder, "locked_until": utcnow(lock_s),
                              "response_status": None, "response_headers": None, "response_body": None}
    if new_record:
        values["created_at"] = utcnow()
    taken = session.execute(
        update(IdempotencyKey).where(this, fence).values(**values).execution_options(synchronize_session=False)
    )
    return Held(client_id, key, holder) if taken.rowcount == 1 else Busy()  # type: ignore[attr-defined]


def complete(session: Session, held: Held, status: int, headers: dict[str, str], body: str,
             user_id: str | None = None) -> bool:
    """Record the answer of the request holding the key (inside the transaction that created what it answers).

    ``user_id``: whose data the answer shows (user deletion removes the record with the user's other data).
    """
    result = session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.client_id == held.client_id, IdempotencyKey.key == held.key,
               IdempotencyKey.holder == held.holder)
        .values(response_status=status, response_headers=headers, response_body=body, holder=None,
                locked_until=None, user_id=user_id)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, held: Held) -> None:
    """Free the key of a request that created nothing."""
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.client_id == held.client_id,
            IdempotencyKey.key == held.key,
            IdempotencyKey.holder == held.holder,
            IdempotencyKey.response_status.is_(None),
        )
    )


def forget_user(session: Session, client_id: str, user_id: str) -> int:
    """Remove the recorded answers about one user (for user deletion)."""
    result = session.execute(
        delete(IdempotencyKey).where(IdempotencyKey.client_id == client_id, IdempotencyKey.user_id == user_id)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def purge(session: Session, ttl_s: float) -> int:
    """Forget keys older than their retention."""
    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.created_at < utcnow(-ttl_s)))
    return int(result.rowcount)  # type: ignore[attr-defined]
