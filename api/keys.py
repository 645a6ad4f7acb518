"""API keys: random, high-entropy, shown once, stored only as SHA-256, listable by prefix, revocable.

A fast hash is right for random 256-bit keys (a slow password hash would add tens of ms to every request and buys
nothing against keys nobody can guess).

An API process remembers the keys it has checked for ``ILLUSTRATIONS_API_KEY_CACHE_S`` (``KeyCache``): a request
with a remembered key reads nothing from the database. So a revoked key (or a scope change) takes effect in every
API process within that many seconds; a key is remembered only while it stays unexpired for the whole time, so
expiry is exact. ``last_used_at`` is written when a key is read again, at most once a minute per key.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared.db import utcnow
from shared.models import DEFAULT_SCOPES, SCOPES, ApiKey, Client

KEY_PREFIX: Final = "ik_"
PREFIX_CHARS: Final = 11  # "ik_" + 8 characters: enough to tell keys apart in a listing, useless to an attacker
LAST_USED_RESOLUTION_S: Final = 60.0
KEY_CACHE_MAX: Final = 10_000  # keys remembered per process (only valid keys are); the oldest go first
# Scopes that include others: an ``ops`` key reads all that a ``metrics`` key reads (and the /ops page).
INCLUDED: Final = {"ops": frozenset({"metrics"})}


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the client (tenant) and the scopes of the key used."""

    client_id: str
    client_name: str
    key_id: str
    scopes: frozenset[str]


def effective_scopes(granted: Iterable[str]) -> frozenset[str]:
    """The scopes a key acts with: those granted and those they include."""
    granted = frozenset(granted)
    return granted.union(*(INCLUDED.get(scope, frozenset()) for scope in granted))


def create_key(
    session: Session, client_name: str, scopes: tuple[str, ...] = DEFAULT_SCOPES, expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create a key for ``client_name`` (creating the client if absent); returns the row and the plaintext."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; known: {', '.join(SCOPES)}")
    client = session.execute(select(Client).where(Client.name == client_name)).scalar_one_or_none()
    if client is None:
        client = Client(name=client_name)
        session.add(client)
        session.flush()
    plaintext = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        client_id=client.id,
        prefix=plaintext[:PREFIX_CHARS],
        key_hash=hash_key(plaintext),
        scopes=sorted(set(scopes)),
        expires_at=expires_at,
    )
    session.add(key)
    session.flush()
    return key, plaintext


def authenticate(session: Session, plaintext: str) -> Principal | None:
    """The principal of a valid (known, not revoked, not expired) key, else None."""
    found = _lookup(session, plaintext, 0.0)
    return found[0] if found is not None else None


def _lookup(session: Session, plaintext: str, for_s: float) -> tuple[Principal, bool] | None:
    """A valid key's principal, and whether it stays unexpired for ``for_s`` more seconds (the database's clock)."""
    row = session.execute(
        select(ApiKey.id, ApiKey.scopes, Client.id.label("client_id"), Client.name,
               or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > utcnow(for_s)).label("lasts"))
        .join(Client, Client.id == ApiKey.client_id)
        .where(
            ApiKey.key_hash == hash_key(plaintext),
            ApiKey.revoked_at.is_(None),
            or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > utcnow()),
        )
    ).one_or_none()
    if row is None:
        return None
    principal = Principal(client_id=row.client_id, client_name=row.name, key_id=row.id,
                          scopes=effective_scopes(row.scopes))
    return principal, bool(row.lasts)


class KeyCache:
    """The valid keys this process has checked in the last ``ttl_s`` seconds (by their hash), so most requests
    authenticate without a database round trip. ``ttl_s`` 0 reads the key on every request."""

    def __init__(self, ttl_s: float, max_entries: int = KEY_CACHE_MAX) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def authenticate(self, session_factory: Callable[[], AbstractContextManager[Session]],
                     plaintext: str) -> Principal | None:
        """The principal of a valid key (remembered, or read and then remembered; ``last_used_at`` touched on
        each read), else None. Unknown keys are never remembered."""
        digest = hash_key(plaintext)
        now = time.monotonic()
        if self.ttl_s > 0:
            remembered = self._entries.get(digest)
            if remembered is not None and remembered[1] > now:
                return remembered[0]
        with session_factory() as session:
            found = _lookup(session, plaintext, self.ttl_s)
            if found is not None:
                touch(session, found[0].key_id)
        if found is None:
            return None
        principal, lasts = found
        if self.ttl_s > 0 and lasts:
            with self._lock:
                self._entries.pop(digest, None)
                if len(self._entries) >= self.max_entries:
                    self._entries.pop(next(iter(self._entries)))  # the oldest entry
                self._entries[digest] = (principal, now + self.ttl_s)
        return principal

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def touch(session: Session, key_id: str) -> None:
    """Record use, at most once a minute per key (a write per request would cost more than it tells)."""
    session.execute(
        update(ApiKey)
        .where(
            ApiKey.id == key_id,
            or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at < utcnow(-LAST_USED_RESOLUTION_S)),
        )
        .values(last_used_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def revoke(session: Session, prefix: str, client_name: str | None = None) -> list[str]:
    """Revoke the live keys whose prefix starts with ``prefix`` (of ``client_name`` if given); their ids."""
    if len(prefix) < len(KEY_PREFIX) + 4:
        raise ValueError(f"give at least {len(KEY_PREFIX) + 4} characters of the key's prefix")
    query = select(ApiKey.id).where(ApiKey.prefix.startswith(prefix, autoescape=True), ApiKey.revoked_at.is_(None))
    if client_name is not None:
        query = query.join(Client, Client.id == ApiKey.client_id).where(Client.name == client_name)
    ids = list(session.execute(query).scalars())
    if ids:
        session.execute(
            update(ApiKey).where(ApiKey.id.in_(ids)).values(revoked_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return ids
