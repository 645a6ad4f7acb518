"""The outbox relay and the lease sweep, against real PostgreSQL/SQLite and a real Redis."""

from __future__ import annotations

import base64
import json

import redis

from shared import jobs
from shared.db import Database
from shared.queue import Publisher, make_celery
from shared.settings import Settings
from tests.shared.test_jobs import add_job, claim, load, unpublished_ids
from worker.maintenance import relay_unpublished, sweep


def queued_ids(client: redis.Redis, queue: str) -> list[str]:
    return [json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0] for raw in client.lrange(queue, 0, -1)]


def test_relay_publishes_what_was_not_published_once(any_db: Database, settings: Settings) -> None:
    queue = "illustrations.test-relay"
    broker = redis.Redis.from_url(settings.broker_url)
    broker.delete(queue)
    job_id = add_job(any_db, queue=queue)
    with any_db.begin() as session:
        ids_before = unpublished_ids(session, 0)
    assert job_id in ids_before
    publisher = Publisher(make_celery(settings, producer=True))
    relaxed = settings.model_copy(update={"relay_delay_s": 0.0})
    assert relay_unpublished(any_db, relaxed, publisher, batch=100_000) >= 1
    assert queued_ids(broker, queue) == [job_id]
    assert load(any_db, job_id).published_at is not None
    relay_unpublished(any_db, relaxed, publisher, batch=100_000)
    assert queued_ids(broker, queue) == [job_id]  # published once
    broker.delete(queue)


def test_relay_leaves_young_rows_and_survives_a_dead_broker(any_db: Database, settings: Settings) -> None:
    job_id = add_job(any_db, queue="illustrations.test-relay-dead")
    dead = Publisher(make_celery(settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"}), producer=True))
    assert relay_unpublished(any_db, settings.model_copy(update={"relay_delay_s": 0.0}), dead, batch=100_000) == 0
    assert load(any_db, job_id).published_at is None
    live = Publisher(make_celery(settings, producer=True))
    with any_db.begin() as session:
        assert job_id not in [row[0] for row in jobs.unpublished(session, 3600, limit=100_000)]
    relay_unpublished(any_db, settings.model_copy(update={"relay_delay_s": 3600.0}), live)
    assert load(any_db, job_id).published_at is None  # younger than the delay: the API's own publish may be on its way


def test_sweep_requeues_expired_leases_then_fails_worker_lost(any_db: Database, settings: Settings) -> None:
    job_id = add_job(any_db)
    claim(any_db, job_id, lease_s=-1)
    result = sweep(any_db, settings.model_copy(update={"max_attempts": 2}))
    assert job_id in result.requeued and job_id not in result.failed
    assert load(any_db, job_id).status == "queued"
    claim(any_db, job_id, lease_s=-1)
    result = sweep(any_db, settings.model_copy(update={"max_attempts": 2}))
    assert job_id in result.failed
    job = load(any_db, job_id)
    assert job.status == "failed" and job.error_code == "worker_lost"
