"""Webhook tasks: beat's dispatch (maintenance queue) and one delivery attempt (``illustrations.webhooks``, a CPU
worker). Logic in ``worker.webhooks``.

Both ack on receipt: an attempt lost with its worker is sent again by the dispatch once its lease ran out (the
event's state and next attempt live in PostgreSQL, not in the message).
"""

from __future__ import annotations

from shared import tasks
from shared.fetch import Fetcher
from shared.queue import Publisher
from worker import observability, webhooks
from worker.celery_app import app
from worker.runtime import get_runtime


@app.task(name=tasks.DISPATCH_WEBHOOKS, ignore_result=True, acks_late=False)
def dispatch() -> int:
    runtime = get_runtime()
    return webhooks.dispatch(runtime.db, runtime.settings, Publisher(app))


@app.task(name=tasks.DELIVER_WEBHOOK, ignore_result=True, acks_late=False)
def deliver(event_id: str) -> str:
    runtime = get_runtime()
    settings = runtime.settings
    fetcher = Fetcher(allowlist=settings.fetch_allowlist, timeout_s=settings.webhook_timeout_s,
                      connect_timeout_s=min(settings.fetch_connect_timeout_s, settings.webhook_timeout_s),
                      ca_bundle=str(settings.fetch_ca_bundle) if settings.fetch_ca_bundle else None)
    state = webhooks.deliver(runtime.db, settings, fetcher, event_id)
    observability.WEBHOOK_ATTEMPTS.labels(outcome=state).inc()
    return state
