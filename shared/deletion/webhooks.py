"""The ``webhooks`` part of a user deletion: the user's webhook events (their bodies hold the user's jobs) and their
delivery attempts."""

from __future__ import annotations

from sqlalchemy.orm import Session

from shared.deletion import part
from shared.storage import Storage
from shared.webhooks import events


@part("webhooks", order=40)
def delete_webhook_events(session: Session, storage: Storage, client_id: str, user_id: str) -> int:
    return events.forget_user(session, client_id, user_id)
