"""Each client's ``whsec_`` signing secrets: encrypted at rest, rotated with an overlap, and the signature header.

The HMAC key is the base64-decoded part after ``whsec_`` (the spec and its reference library ``standardwebhooks``
do this; we sign with that library). During a rotation every live secret signs: ``webhook-signature`` carries
``v1,<sig>`` once per secret, space-separated, the current one first; a receiver that knows either verifies.

At rest each secret is a Fernet token (``cryptography``). The keys are the setting ``webhook_secret_keys``
(MultiFernet: the first encrypts, each one decrypts, so a new key goes first and the old one stays until
``reencrypt`` ran). Without keys, the embedded mode (SQLite, one machine) keeps one in a file under ``var_dir``
(mode 0600); with a database URL the keys must be set (a key file per host would not be shared).
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from cryptography.fernet import Fernet, MultiFernet
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session
from standardwebhooks import Webhook

from shared.db import utcnow
from shared.models import Client, WebhookSecret
from shared.settings import Settings

log = logging.getLogger(__name__)

PREFIX: Final = "whsec_"
SECRET_BYTES: Final = 24  # 192 bits, as Svix issues them (32 base64 characters)
KEY_FILE: Final = "webhook-secret.key"


def cipher(settings: Settings) -> MultiFernet:
    """The MultiFernet of ``webhook_secret_keys``, or of the embedded mode's key file (created once)."""
    keys = list(settings.webhook_secret_keys)
    if not keys:
        if settings.database_url:  # several hosts: a key file each would make secrets unreadable to the others
            raise ValueError("set ILLUSTRATIONS_WEBHOOK_SECRET_KEYS (a JSON list of Fernet keys, shared by every "
                             "process) to sign webhooks outside the embedded mode")
        keys = [_file_key(settings.var_path / KEY_FILE)]
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError:
        raise ValueError("ILLUSTRATIONS_WEBHOOK_SECRET_KEYS: each key must be a Fernet key (32 url-safe base64 "
                         "bytes, from `Fernet.generate_key()`)") from None


def _file_key(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return path.read_text().strip()
    with os.fdopen(fd, "wb") as file:
        file.write(key)
    log.info("webhook secrets are encrypted with a key kept in %s (embedded mode)", path)
    return key.decode()


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _live(client_id: str) -> list[object]:
    return [WebhookSecret.client_id == client_id,
            or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > utcnow())]


def live_secrets(session: Session, client_id: str, crypt: MultiFernet, *, create: bool = False) -> list[str]:
    """The client's secrets that sign now, current first; with ``create``, a first one is made if it has none."""
    rows = session.execute(
        select(WebhookSecret.encrypted).where(*_live(client_id))  # type: ignore[arg-type]
        .order_by(WebhookSecret.expires_at.is_not(None), WebhookSecret.created_at.desc())
    ).scalars().all()
    if rows or not create:
        return [crypt.decrypt(token.encode()).decode() for token in rows]
    _lock(session, client_id)  # two first deliveries at once must agree on one secret
    if session.execute(select(WebhookSecret.id).where(*_live(client_id)).limit(1)).first():  # type: ignore[arg-type]
        return live_secrets(session, client_id, crypt)
    secret = new_secret()
    session.add(WebhookSecret(client_id=client_id, encrypted=crypt.encrypt(secret.encode()).decode()))
    session.flush()
    return [secret]


def rotate(session: Session, client_id: str, crypt: MultiFernet, overlap_s: float) -> str:
    """A new current secret; the previous ones keep signing for ``overlap_s`` (both signatures are sent)."""
    _lock(session, client_id)
    session.execute(
        update(WebhookSecret).where(WebhookSecret.client_id == client_id, WebhookSecret.expires_at.is_(None))
        .values(expires_at=utcnow(overlap_s)).execution_options(synchronize_session=False)
    )
    secret = new_secret()
    session.add(WebhookSecret(client_id=client_id, encrypted=crypt.encrypt(secret.encode()).decode()))
    session.flush()
    return secret


def reencrypt(session: Session, crypt: MultiFernet) -> int:
    """Encrypt every stored secret again with the first key (after adding a new key in front)."""
    rows = session.execute(select(WebhookSecret)).scalars().all()
    for row in rows:
        row.encrypted = crypt.rotate(row.encrypted.encode()).decode()
    return len(rows)


def _lock(session: Session, client_id: str) -> None:
    session.execute(select(Client.id).where(Client.id == client_id).with_for_update())


def signature(live: Sequence[str], msg_id: str, timestamp: dt.datetime, body: str) -> str:
    """The ``webhook-signature`` header: ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` per secret."""
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in live)


def headers(live: Sequence[str], msg_id: str, timestamp: dt.datetime, body: str) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt (the timestamp is the attempt's, whole seconds)."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature(live, msg_id, timestamp, body),
    }
