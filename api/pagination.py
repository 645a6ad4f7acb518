"""Cursor pagination (newest first): an opaque cursor holds the last item's (created_at, id)."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_
from sqlalchemy.orm import Session

from api.errors import validation_error


def make_cursor(created_at: dt.datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _position(value: str) -> tuple[dt.datetime, str]:
    try:
        created, row_id = json.loads(base64.urlsafe_b64decode(value.encode() + b"=" * (-len(value) % 4)))
        position = dt.datetime.fromisoformat(created), str(row_id)
    except (ValueError, TypeError, binascii.Error, UnicodeError):
        raise validation_error([("cursor", "not a cursor this API gave out")]) from None
    if position[0].tzinfo is None:
        raise validation_error([("cursor", "not a cursor this API gave out")])
    return position


def after_cursor(created_column: Any, id_column: Any, value: str | None) -> list[ColumnElement[bool]]:
    """The keyset condition "older than the cursor" (ties on created_at broken by id), or nothing."""
    if value is None:
        return []
    created, row_id = _position(value)
    return [or_(created_column < created, and_(created_column == created, id_column < row_id))]


def newest_page(session: Session, query: Select[Any], entity: Any, cursor: str | None,
                limit: int) -> tuple[list[Any], str | None]:
    """One page of ``query``'s rows of ``entity`` (a model with ``created_at`` and ``id``), newest first, after
    ``cursor``; and the cursor of the next page (None at the end)."""
    query = query.where(*after_cursor(entity.created_at, entity.id, cursor))
    rows = list(session.execute(
        query.order_by(entity.created_at.desc(), entity.id.desc()).limit(limit + 1)
    ).scalars())
    page = rows[:limit]
    return page, make_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
