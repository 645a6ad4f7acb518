"""``Idempotency-Key`` on any route: the Flask side of ``shared.idempotency``.

Put ``@idempotent`` under ``@require(...)`` (it needs the caller's client). A route that creates rows calls
``record(session, status, body, headers)`` inside the transaction that creates them, so the rows and the answer a
retry will get commit together; a route that does not is recorded right after it answers. Only 2xx answers are
kept: an error answer frees the key.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ParamSpec

from flask import Response, current_app, g, make_response, request
from sqlalchemy.orm import Session

from api.auth import current_principal
from api.errors import ApiError
from api.services import services
from shared import idempotency
from shared.errors import ProblemCode

P = ParamSpec("P")
HEADER = "Idempotency-Key"


@dataclass
class _Pending:
    held: idempotency.Held
    recorded: bool = False


def _key() -> str | None:
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= idempotency.KEY_MAX_CHARS or not key.isprintable() or not key.isascii():
        raise ApiError(422, "Unprocessable Content", "the Idempotency-Key header is not valid",
                       [(HEADER, f"must be 1 to {idempotency.KEY_MAX_CHARS} printable ASCII characters")])
    return key


def _body() -> Any:
    """The request body in a canonical form (JSON parsed; forms as fields and file digests)."""
    if request.mimetype == "multipart/form-data" or request.mimetype == "application/x-www-form-urlencoded":
        files: dict[str, list[list[str | None]]] = {}
        for name, storage in request.files.items(multi=True):
            digest = hashlib.sha256(storage.stream.read()).hexdigest()
            storage.stream.seek(0)
            files.setdefault(name, []).append([storage.filename, digest])
        return {"form": sorted(request.form.items(multi=True)), "files": files}
    data = request.get_data(cache=True)
    try:
        return json.loads(data)
    except ValueError:
        return data.hex()


def record(session: Session, status: int, body: Any, headers: dict[str, str] | None = None, *,
           user_id: str | None = None) -> None:
    """Record this request's answer in the caller's transaction (no-op without an Idempotency-Key); ``user_id``
    names the user whose data the body shows, so user deletion can remove the record."""
    pending: _Pending | None = g.get("idempotency")
    if pending is None:
        return
    idempotency.complete(session, pending.held, status, headers or {}, current_app.json.dumps(body), user_id)
    pending.recorded = True


def _replay(replay: idempotency.Replay) -> Response:
    response = Response(replay.body, status=replay.status, mimetype="application/json")
    for name, value in replay.headers.items():
        response.headers[name] = value
    response.headers["Idempotent-Replayed"] = "true"
    return response


def idempotent(view: Callable[P, Any]) -> Callable[P, Response]:
    """Honour an ``Idempotency-Key`` header on this route (see the module's docstring)."""

    @functools.wraps(view)
    def wrapped(*args: P.args, **kwargs: P.kwargs) -> Response:
        key = _key()
        if key is None:
            return make_response(view(*args, **kwargs))
        svc = services()
        route = request.url_rule.rule if request.url_rule is not None else request.path
        digest = idempotency.request_hash(request.method, route, _body())
        with svc.db.begin() as session:
            outcome = idempotency.begin(session, current_principal().client_id, key, digest,
                                        lock_s=svc.settings.idempotency_lock_s, ttl_s=svc.settings.idempotency_ttl_s)
        if isinstance(outcome, idempotency.Replay):
            return _replay(outcome)
        if isinstance(outcome, idempotency.Busy):
            raise ApiError(409, "Conflict", "a request with this Idempotency-Key is still being processed",
                           headers={"Retry-After": "1"}, code=ProblemCode.IDEMPOTENCY_IN_FLIGHT)
        if isinstance(outcome, idempotency.Mismatch):
            raise ApiError(422, "Unprocessable Content", "this Idempotency-Key was used with another request",
                           [(HEADER, "already used with a different request body")],
                           code=ProblemCode.IDEMPOTENCY_KEY_REUSED)
        pending = _Pending(outcome)
        g.idempotency = pending
        try:
            response = make_response(view(*args, **kwargs))
        except BaseException:
            _release(pending.held)
            raise
        if not pending.recorded:
            if 200 <= response.status_code < 300:
                with svc.db.begin() as session:
                    idempotency.complete(session, pending.held, response.status_code,
                                         _kept_headers(response), response.get_data(as_text=True))
            else:
                _release(pending.held)
        return response

    return wrapped


def _kept_headers(response: Response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name in ("Location", "Retry-After")}


def _release(held: idempotency.Held) -> None:
    try:
        with services().db.begin() as session:
            idempotency.release(session, held)
    except Exception:  # the database is down: the key frees itself after idempotency_lock_s
        current_app.logger.warning("could not release an idempotency key; it frees itself after its lock")
