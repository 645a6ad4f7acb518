"""One delivery attempt at a time (``worker.webhooks.deliver``) against a real HTTP receiver on loopback, real
PostgreSQL, real Redis for the dispatch: signatures verified with the reference library, one webhook-id across
retries, 3xx a failure (no redirect followed), 410 stops, Retry-After honoured, a resolved private address
refused, the user deletion part, the dispatch to the webhooks queue."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
import redis
from cryptography.fernet import Fernet
from sqlalchemy import select, update
from standardwebhooks import Webhook

from shared import jobs
from shared.db import Database
from shared.deletion import parts
from shared.errors import CancelReason
from shared.fetch import Fetcher
from shared.models import WebhookAttempt, WebhookEvent
from shared.queue import Publisher, make_celery
from shared.settings import Settings
from shared.storage import open_storage
from shared.webhooks import secrets
from tests.helpers import IMAGE, add_job
from tests.webhook_receiver import Receiver
from worker.webhooks import deliver, dispatch, parse_retry_after

SCHEDULE = [0.0, 0.0, 0.0, 0.0]  # every retry due at once: the test calls deliver() itself


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"webhook_retry_schedule_s": SCHEDULE, "webhook_retry_jitter": 0.0,
                                       "webhook_secret_keys": [Fernet.generate_key().decode()]})


@pytest.fixture
def fetcher() -> Fetcher:
    return Fetcher(allowlist=["127.0.0.1"], timeout_s=5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as server:
        yield server


def finished_job(db: Database, url: str, user_id: str = "u1") -> tuple[str, str]:
    """A job that ends (canceled) with ``url``: returns (job id, event id)."""
    job_id = add_job(db, webhook_url=url, user_id=user_id)
    with db.begin() as session:
        assert jobs.canceled(session, job_id, CancelReason.CANCELED_BY_CLIENT)
    return job_id, "msg_" + job_id.replace("-", "")


def event(db: Database, event_id: str) -> WebhookEvent:
    with db.begin() as session:
        return session.get_one(WebhookEvent, event_id)


def attempts(db: Database, event_id: str) -> list[WebhookAttempt]:
    with db.begin() as session:
        return list(session.execute(select(WebhookAttempt).where(WebhookAttempt.event_id == event_id)
                                    .order_by(WebhookAttempt.id)).scalars())


def secret_of(db: Database, settings: Settings, client_id: str) -> str:
    with db.begin() as session:
        return secrets.live_secrets(session, client_id, secrets.cipher(settings), create=True)[0]


def test_500_three_times_then_200_is_delivered_with_one_id_and_every_attempt_logged(
    db: Database, hook_settings: Settings, fetcher: Fetcher, receiver: Receiver
) -> None:
    receiver.answers = [500, 500, 500, 200]
    job_id, event_id = finished_job(db, receiver.url())
    states = [deliver(db, hook_settings, fetcher, event_id) for _ in range(4)]
    assert states == ["pending", "pending", "pending", "delivered"]
    assert deliver(db, hook_settings, fetcher, event_id) == "skipped"  # delivered: a twin message sends nothing
    assert len(receiver.received) == 4
    row = event(db, event_id)
    assert (row.state, row.attempts, row.next_attempt_at) == ("delivered", 4, None)
    assert row.delivered_at is not None
    secret = secret_of(db, hook_settings, row.client_id)
    bodies = set()
    for got in receiver.received:
        assert got.headers["webhook-id"] == event_id  # one id across retries
        assert got.headers["content-type"] == "application/json"
        Webhook(secret).verify(got.body, got.headers)
        bodies.add(got.body)
    assert len(bodies) == 1  # the body was frozen at the first attempt
    body = json.loads(bodies.pop())
    assert body["type"] == "illustration.canceled"
    assert body["data"]["id"] == job_id
    logged = attempts(db, event_id)
    assert [(a.attempt, a.status_code) for a in logged] == [(1, 500), (2, 500), (3, 500), (4, 200)]
    assert all(a.latency_ms is not None and a.latency_ms >= 0 for a in logged)
    assert logged[0].error == "the receiver answered 500"
    assert logged[3].error is None


@pytest.mark.parametrize(("base", "broker_url", "expected"), [
    ("https://illustrations.example", "redis://127.0.0.1:6379/0", "https://illustrations.example"),
    (None, "", "http://127.0.0.1:8765"),  # the embedded mode: the API's own address
])
def test_a_webhook_body_carries_absolute_image_urls_and_links(
    db: Database, hook_settings: Settings, fetcher: Fetcher, receiver: Receiver, base: str | None, broker_url: str,
    expected: str
) -> None:
    settings = hook_settings.model_copy(update={"public_base_url": base, "broker_url": broker_url,
                                                "api_bind": "0.0.0.0:8765"})
    job_id = add_job(db, webhook_url=receiver.url())
    with db.begin() as session:
        claim = jobs.started(session, job_id, "w", 60)
        assert isinstance(claim, jobs.Claim)
    with db.begin() as session:
        assert jobs.succeeded(session, claim, [IMAGE])
    assert deliver(db, settings, fetcher, "msg_" + job_id.replace("-", "")) == "delivered"
    data = json.loads(receiver.received[0].body)["data"]
    assert [image["url"] for image in data["images"]] == [f"{expected}/v1/illustrations/{job_id}/images/0"]
    assert data["links"] == {"self": f"{expected}/v1/illustrations/{job_id}"}


def test_the_schedule_runs_out_then_failed(db: Database, hook_settings: Settings, fetcher: Fetcher,
                                           receiver: Receiver) -> None:
    receiver.answers = [503]
    _, event_id = finished_job(db, receiver.url())
    states = [deliver(db, hook_settings, fetcher, event_id) for _ in range(len(SCHEDULE) + 1)]
    assert states == ["pending"] * len(SCHEDULE) + ["failed"]
    assert event(db, event_id).finished_at is not None


def test_410_stops_and_a_redirect_is_a_failure_not_followed(db: Database, hook_settings: Settings,
                                                            fetcher: Fetcher, receiver: Receiver) -> None:
    receiver.answers = [302, 410]
    _, event_id = finished_job(db, receiver.url())
    assert deliver(db, hook_settings, fetcher, event_id) == "pending"
    assert [got.path for got in receiver.received] == ["/hooks"]  # /moved was never asked for
    assert deliver(db, hook_settings, fetcher, event_id) == "stopped"
    assert deliver(db, hook_settings, fetcher, event_id) == "skipped"
    assert [a.status_code for a in attempts(db, event_id)] == [302, 410]


def test_retry_after_is_honoured_up_to_the_cap(db: Database, hook_settings: Settings, fetcher: Fetcher) -> None:
    capped = hook_settings.model_copy(update={"webhook_retry_after_max_s": 120.0})
    with Receiver([429], extra={"Retry-After": "86400"}) as server:
        _, event_id = finished_job(db, server.url())
        before = dt.datetime.now(dt.UTC)
        assert deliver(db, capped, fetcher, event_id) == "pending"
    due = event(db, event_id).next_attempt_at
    assert due is not None
    assert 110 <= (due - before).total_seconds() <= 130
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("soon") is None
    assert (parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT") or 0) > 50


def test_a_receiver_that_is_down_or_resolves_to_a_private_address_is_an_attempt_that_failed(
    db: Database, hook_settings: Settings, receiver: Receiver
) -> None:
    _, down = finished_job(db, "http://127.0.0.1:9/hooks")  # nothing listens on the discard port
    assert deliver(db, hook_settings, Fetcher(allowlist=["127.0.0.1"], timeout_s=2), down) == "pending"
    (logged,) = attempts(db, down)
    assert logged.status_code is None
    assert "cannot be reached" in (logged.error or "")
    # A name that resolves to loopback, without the allowlist: refused before any connection.
    _, blocked = finished_job(db, f"http://localhost:{receiver.port}/hooks")
    assert deliver(db, hook_settings, Fetcher(timeout_s=2), blocked) == "pending"
    (logged,) = attempts(db, blocked)
    assert logged.status_code is None
    assert (logged.error or "").startswith("blocked:")
    assert "loopback" in logged.error
    assert receiver.received == []


def test_rotation_sends_both_signatures_and_each_verifies(db: Database, hook_settings: Settings, fetcher: Fetcher,
                                                          receiver: Receiver) -> None:
    _, first_id = finished_job(db, receiver.url())
    client_id = event(db, first_id).client_id
    old = secret_of(db, hook_settings, client_id)
    with db.begin() as session:
        new = secrets.rotate(session, client_id, secrets.cipher(hook_settings), overlap_s=3600)
    assert deliver(db, hook_settings, fetcher, first_id) == "delivered"
    (got,) = receiver.received
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(got.body, got.headers)


def test_a_deleted_users_events_and_attempts_are_removed(db: Database, hook_settings: Settings, fetcher: Fetcher,
                                                         receiver: Receiver, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, gone = finished_job(db, receiver.url(), user_id="u-hooks-gone")
    assert deliver(db, hook_settings, fetcher, gone) == "delivered"
    client_id = event(db, gone).client_id
    stays = add_job(db, client_id=client_id, user_id="u-stays", webhook_url=receiver.url())
    with db.begin() as session:
        jobs.canceled(session, stays, CancelReason.CANCELED_BY_CLIENT)
    (webhooks_part,) = [p for p in parts() if p.name == "webhooks"]
    with db.begin() as session:
        assert webhooks_part.delete(session, open_storage(hook_settings), client_id, "u-hooks-gone") == 1
    with db.begin() as session:
        assert session.get(WebhookEvent, gone) is None
        assert session.execute(select(WebhookAttempt).where(WebhookAttempt.event_id == gone)).first() is None
        assert session.get(WebhookEvent, "msg_" + stays.replace("-", "")) is not None


def test_dispatch_sends_due_ids_to_the_webhooks_queue_once(db: Database, hook_settings: Settings) -> None:
    broker = redis.Redis.from_url(hook_settings.broker_url)
    broker.delete("illustrations.webhooks")
    with db.begin() as session:  # only this test's event is due
        session.execute(update(WebhookEvent).where(WebhookEvent.state == "pending").values(state="failed"))
    _, event_id = finished_job(db, "https://a.example/x")
    publisher = Publisher(make_celery(hook_settings, producer=True))
    assert dispatch(db, hook_settings, publisher) == 1
    assert dispatch(db, hook_settings, publisher) == 0  # claimed: not sent twice within its lease
    raws = broker.lrange("illustrations.webhooks", 0, -1)
    assert len(raws) == 1
    message = json.loads(raws[0])
    assert message["headers"]["task"] == "illustrations.deliver_webhook"
    assert message["headers"]["argsrepr"] == repr([event_id])  # only the id travels
