"""The HTTP API: a Flask application factory run under gunicorn (gthread). No torch is imported here."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from api import (
    batches,
    body,
    compat,
    errors,
    feedback,
    health,
    illustrations,
    logs,
    metrics,
    openapi,
    ops_page,
    paths,
    quality,
    ratelimit,
    styles,
    subjects,
    users,
    webhooks,
)
from api.keys import KeyCache
from api.services import Services
from api.waiting import JobWaiter
from shared import limits
from shared.db import Database
from shared.embedded import ensure_redis
from shared.fetch import Fetcher
from shared.migrate import upgrade
from shared.queue import Publisher, make_celery
from shared.settings import Settings, get_settings
from shared.storage import open_storage

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    paths.init_app(app)  # before any route is added
    app.config["MAX_CONTENT_LENGTH"] = limits.REQUEST_BODY_MAX_BYTES
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if settings.is_sqlite:
        upgrade(settings)  # embedded mode: the schema is ours to keep current; PostgreSQL migrates explicitly
    ensure_redis(settings)
    db = Database(settings)
    app.extensions["illustrations"] = Services(
        settings=settings,
        db=db,
        storage=open_storage(settings),
        publisher=Publisher(make_celery(settings, "illustrations-api", producer=True)),
        waiter=JobWaiter(db, settings),
        fetcher=Fetcher.from_settings(settings),
        keys=KeyCache(settings.api_key_cache_s),
    )
    logs.init_app(app)  # first: every later hook and handler logs with the request id
    metrics.init_app(app)  # then: every request is counted, even one refused by a later hook
    errors.init_app(app)
    body.init_app(app)
    ratelimit.init_app(app, settings)
    _add_routes(app)
    return app


def _add_routes(app: Flask) -> None:
    for module in (health, illustrations, subjects, styles, batches, users, compat, feedback, quality, ops_page,
                   webhooks, openapi):
        module.init_app(app)


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the app, built without a database, broker or store (the routes are the same as
    ``create_app``'s): what ``illustrations openapi`` writes and the TypeScript client is generated from."""
    app = Flask(__name__)
    paths.init_app(app)
    metrics.init_app(app)
    _add_routes(app)
    return openapi.build_document(app)
