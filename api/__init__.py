"""The HTTP API: a Flask application factory run under gunicorn (gthread). No torch is imported here."""

from __future__ import annotations

import logging

from flask import Flask

from api import errors, health, illustrations, subjects
from api.services import Services
from shared import limits
from shared.db import Database
from shared.embedded import ensure_redis
from shared.migrate import upgrade
from shared.queue import Publisher, make_celery
from shared.settings import Settings, get_settings
from shared.storage import open_storage

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = limits.REQUEST_BODY_MAX_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if settings.is_sqlite:
        upgrade(settings)  # embedded mode: the schema is ours to keep current; PostgreSQL migrates explicitly
    ensure_redis(settings)
    app.extensions["illustrations"] = Services(
        settings=settings,
        db=Database(settings),
        storage=open_storage(settings),
        publisher=Publisher(make_celery(settings, "illustrations-api", producer=True)),
    )
    errors.init_app(app)
    health.init_app(app)
    illustrations.init_app(app)
    subjects.init_app(app)
    return app
