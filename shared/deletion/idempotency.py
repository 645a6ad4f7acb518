"""The ``idempotency`` part of a user deletion: recorded answers about the user (they may hold their prompt)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from shared import idempotency
from shared.deletion import part
from shared.storage import Storage


@part("idempotency", order=30)
def delete_idempotency_records(session: Session, storage: Storage, client_id: str, user_id: str) -> int:
    return idempotency.forget_user(session, client_id, user_id)
