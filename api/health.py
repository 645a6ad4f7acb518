"""``/healthz`` (the process answers) and ``/readyz`` (PostgreSQL decides; the broker is reported, not required)."""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, jsonify
from sqlalchemy import text

from api.services import services

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int, dict[str, str]] | Response:
    svc = services()
    database = "ok"
    try:
        with svc.db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("readiness: database down (%s)", type(exc).__name__)
        database = "down"
    broker = "ok" if svc.publisher.broker_ok() else "down"
    body = jsonify(database=database, broker=broker)
    if database != "ok":
        return body, 503, {"Retry-After": str(svc.settings.retry_after_s)}
    return body


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
