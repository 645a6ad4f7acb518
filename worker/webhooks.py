"""Webhook delivery (CPU worker, ``illustrations.webhooks`` queue) and its dispatch (beat, maintenance queue).

``dispatch``: claim the due events (``FOR UPDATE SKIP LOCKED``, a short lease) and send their ids to the webhooks
queue. The next attempt's time lives in PostgreSQL, never in a Celery countdown (a countdown longer than Redis'
visibility timeout is delivered twice).

``deliver``: one attempt of one event:
1. Read it; render its body on the first attempt and freeze it (every retry signs the same bytes); the client's
   live secrets (a first one is made if it has none).
2. POST through the safe fetcher: the resolved address is checked and connected to, no redirect is followed (3xx
   is a failure), one deadline (``webhook_timeout_s``); headers ``webhook-id``, ``webhook-timestamp``,
   ``webhook-signature``.
3. Log the attempt and move the event: 2xx delivered, 410 stopped, else the next step of the schedule (jitter,
   ``Retry-After`` honoured up to a cap), or failed after the last step.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import time

from shared import tasks
from shared.db import Database
from shared.fetch import FetchBlocked, Fetcher, FetchError
from shared.models import WebhookEvent
from shared.queue import Publisher
from shared.settings import Settings
from shared.webhooks import events, secrets

log = logging.getLogger(__name__)


def dispatch(db: Database, settings: Settings, publisher: Publisher) -> int:
    """Send every due event's id to the webhooks queue; what cannot be sent is due again next round."""
    with db.begin() as session:
        due = events.claim_due(session, settings.webhook_lease_s, settings.webhook_dispatch_batch)
    sent = 0
    for index, event_id in enumerate(due):
        if not publisher.send(tasks.DELIVER_WEBHOOK, event_id, tasks.QUEUE_WEBHOOKS):
            with db.begin() as session:
                events.release(session, due[index:])
            break
        sent += 1
    if sent:
        log.info("webhooks: %d event(s) sent for delivery", sent)
    return sent


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (a number of seconds, or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - dt.datetime.now(dt.UTC)).total_seconds())


def deliver(db: Database, settings: Settings, fetcher: Fetcher, event_id: str) -> str:
    """One attempt of one event; returns its state afterwards (or ``skipped``: gone or no longer pending)."""
    # 1. Read, render once, secrets.
    crypt = secrets.cipher(settings)
    with db.begin() as session:
        event = session.get(WebhookEvent, event_id, with_for_update=True)
        if event is None or event.state != events.PENDING:
            return "skipped"
        if event.payload is None:
            # Absolute URLs (``illustrations worker`` refuses to serve this queue without a base, outside the
            # embedded mode).
            event.payload = events.render(session, event, settings.effective_public_base_url or "")
            if event.payload is None:
                events.gone(session, event_id)
                log.info("webhook %s: its job or style version no longer exists", event_id)
                return events.FAILED
        live = secrets.live_secrets(session, event.client_id, crypt, create=True)
        url, body, attempt = event.url, event.payload, event.attempts + 1

    # 2. POST, signed, to a checked address.
    headers = secrets.headers(live, event_id, dt.datetime.now(dt.UTC), body)
    started = time.monotonic()
    try:
        posted = fetcher.post(url, body.encode(), headers)
        answer = events.Answer(posted.status, (time.monotonic() - started) * 1000,
                               parse_retry_after(posted.retry_after),
                               None if 200 <= posted.status < 300 else f"the receiver answered {posted.status}")
    except FetchBlocked as exc:
        answer = events.Answer(None, (time.monotonic() - started) * 1000, error=f"blocked: {exc}")
    except FetchError as exc:
        answer = events.Answer(None, (time.monotonic() - started) * 1000, error=str(exc))

    # 3. Log the attempt, move the event.
    wait = events.next_wait(settings.webhook_retry_schedule_s, attempt, settings.webhook_retry_jitter,
                            answer.retry_after_s, settings.webhook_retry_after_max_s)
    with db.begin() as session:
        state = events.attempted(session, event_id, attempt, answer, wait)
    log.info("webhook %s attempt %d: %s -> %s", event_id, attempt,
             answer.status_code if answer.status_code is not None else "no answer", state)
    return state
