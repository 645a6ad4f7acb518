"""User deletion (``DELETE /v1/users/{user_id}``): a request row, a registry of parts, and the run that uses them.

Each area that keeps something of a user registers a *part* here: a function ``(session, storage, client_id,
user_id) -> count`` that removes that user's rows and the storage objects only they reference, in the caller's
transaction (objects first: a retry after a failure finds the rows and tries again). The parts of this module's
area are ``jobs`` (rows, their images reference-counted by ``storage_key``, fetched style references) and
``subjects`` (rows, versions and their photos); ``training_images`` (``shared.deletion.training``) removes the
user's pictures from training sets and marks the style versions trained on them. Another area adds its module to
``PART_MODULES`` and decorates its function with ``@part("name", order=N)``; lower orders run first (jobs go
before what hangs off them).

The run (``shared.deletion.run``, a maintenance task): cancel the user's queued jobs (``user_deleted``), flag the
running ones and come back after ``deletion_retry_s`` until none runs, then every part in order, then a final check
(no job or subject of the user left, no style reference under a job that was still being prepared), then
``succeeded``. While a deletion is ``queued`` or ``running``, submissions for that user get 409 (``in_progress``)
and the preparation step stores nothing for them (it cancels the job); the request, the submissions and the
preparation step agree through ``lock_user`` (a PostgreSQL advisory lock; SQLite serialises writers already).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.models import UserDeletion
from shared.storage import Storage

PartFunction = Callable[[Session, Storage, str, str], int]

# Modules that register parts; each area appends its own (importing it registers its parts).
PART_MODULES: Final[list[str]] = [
    "shared.deletion.jobs",
    "shared.deletion.subjects",
    "shared.deletion.engine",
    "shared.deletion.idempotency",
    "shared.deletion.training",
    "shared.deletion.webhooks",
    "shared.deletion.cache",
]
ACTIVE: Final = ("queued", "running")


@dataclass(frozen=True)
class Part:
    name: str
    order: int
    delete: PartFunction


_parts: dict[str, Part] = {}


def part(name: str, order: int = 100) -> Callable[[PartFunction], PartFunction]:
    """Register ``fn`` as the part ``name`` of every user deletion."""

    def register(fn: PartFunction) -> PartFunction:
        _parts[name] = Part(name, order, fn)
        return fn

    return register


def parts() -> list[Part]:
    for module in PART_MODULES:
        importlib.import_module(module)
    return sorted(_parts.values(), key=lambda p: (p.order, p.name))


def _lock_key(client_id: str, user_id: str) -> int:
    digest = hashlib.sha256(f"user-deletion:{client_id}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_user(session: Session, client_id: str, user_id: str, *, exclusive: bool) -> None:
    """Submissions and the preparation step take it shared, a deletion request exclusive, until their transaction
    ends (PostgreSQL).

    On SQLite every write transaction starts with ``BEGIN IMMEDIATE``, which already serialises them.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    lock = func.pg_advisory_xact_lock if exclusive else func.pg_advisory_xact_lock_shared
    session.execute(select(lock(_lock_key(client_id, user_id))))


def in_progress(session: Session, client_id: str, user_id: str) -> UserDeletion | None:
    return session.execute(
        select(UserDeletion).where(
            UserDeletion.client_id == client_id, UserDeletion.user_id == user_id, UserDeletion.status.in_(ACTIVE)
        ).limit(1)
    ).scalar_one_or_none()


def request(session: Session, client_id: str, user_id: str) -> tuple[UserDeletion, bool]:
    """The deletion of this user: the one in progress, or a new one. Returns (row, created)."""
    lock_user(session, client_id, user_id, exclusive=True)
    current = in_progress(session, client_id, user_id)
    if current is not None:
        return current, False
    row = UserDeletion(client_id=client_id, user_id=user_id, status="queued", parts={})
    session.add(row)
    session.flush()
    return row, True
