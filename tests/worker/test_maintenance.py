"""The outbox relay and the lease sweep, against real PostgreSQL/SQLite and a real Redis."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import select

from shared import jobs, tasks, training
from shared.db import Database
from shared.models import Job, StyleVersion
from shared.queue import BROKER_EPOCH_KEY, Publisher, make_celery
from shared.settings import Settings
from shared.training import TrainingClaim
from tests.helpers import add_job, claim, load, unpublished_ids
from worker.maintenance import relay_trainings, relay_unpublished, sweep

ClaimTraining = Callable[[Database, str, float], TrainingClaim]  # the ``claimed_training`` fixture


def queued_ids(client: redis.Redis, queue: str) -> list[str]:
    """Job ids in the order a worker takes them (kombu pushes on the left, workers pop on the right)."""
    raws = reversed(client.lrange(queue, 0, -1))
    return [json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0] for raw in raws]


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
    assert job_id in result.requeued
    assert job_id not in result.failed
    assert load(any_db, job_id).status == "queued"
    claim(any_db, job_id, lease_s=-1)
    result = sweep(any_db, settings.model_copy(update={"max_attempts": 2}))
    assert job_id in result.failed
    job = load(any_db, job_id)
    assert job.status == "failed"
    assert job.error_code == "worker_lost"


def test_the_sweep_requeues_an_expired_training_then_fails_it_worker_lost(
        any_db: Database, settings: Settings, claimed_training: ClaimTraining) -> None:
    job_id = claimed_training(any_db, "w1", -1).job_id  # its worker died: the lease ran out
    once = settings.model_copy(update={"max_attempts": 1})
    assert job_id in sweep(any_db, settings).trainings_requeued
    with any_db.begin() as session:
        assert isinstance(training.claim(session, job_id, "w2", -1), training.TrainingClaim)
    assert job_id in sweep(any_db, once).trainings_failed
    with any_db.begin() as session:
        row = session.execute(select(StyleVersion).where(StyleVersion.job_id == job_id)).scalar_one()
    assert (row.status, row.error_code) == ("failed", "worker_lost")


def test_the_relay_publishes_a_queued_training_once(
        db: Database, settings: Settings, claimed_training: ClaimTraining) -> None:
    job_id = claimed_training(db, "w1", -1).job_id
    sweep(db, settings)  # back to the queue, unpublished
    broker = redis.Redis.from_url(settings.broker_url)
    broker.delete(tasks.QUEUE_TRAINING)
    publisher = Publisher(make_celery(settings, producer=True))
    relaxed = settings.model_copy(update={"relay_delay_s": 0.0})
    rounds = 0
    while relay_trainings(db, relaxed, publisher) and rounds < 100:  # older trainings of the session's tests first
        rounds += 1
    assert job_id in queued_ids(broker, tasks.QUEUE_TRAINING)
    relay_trainings(db, relaxed, publisher)
    assert queued_ids(broker, tasks.QUEUE_TRAINING).count(job_id) == 1  # marked published: not sent again
    broker.delete(tasks.QUEUE_TRAINING)


def test_a_broker_that_lost_its_data_gets_every_queued_job_again(db: Database, settings: Settings) -> None:
    queue = "illustrations.test-epoch"
    broker = redis.Redis.from_url(settings.broker_url)
    broker.delete(queue, BROKER_EPOCH_KEY)
    relaxed = settings.model_copy(update={"relay_delay_s": 0.0, "client_publish_cap": 0})
    publisher = Publisher(make_celery(settings, producer=True))
    job_id = add_job(db, queue=queue)
    relay_unpublished(db, relaxed, publisher, batch=100_000)
    assert queued_ids(broker, queue) == [job_id]
    relay_unpublished(db, relaxed, publisher, batch=100_000)
    assert queued_ids(broker, queue) == [job_id]  # same server, marker in place: nothing again

    broker.delete(queue, BROKER_EPOCH_KEY)  # what a restart without persistence (or a flush) leaves
    relay_unpublished(db, relaxed, publisher, batch=100_000)
    assert queued_ids(broker, queue) == [job_id]  # published again
    run_id = broker.info("server")["run_id"]
    assert broker.get(BROKER_EPOCH_KEY) == run_id.encode()

    broker.set(BROKER_EPOCH_KEY, "an-earlier-run")  # a restart that kept the data may still have lost the tail
    relay_unpublished(db, relaxed, publisher, batch=100_000)
    assert queued_ids(broker, queue) == [job_id, job_id]  # a twin: dropped at the claim, never run twice
    broker.delete(queue)


def test_the_relay_holds_jobs_over_the_clients_cap(db: Database, settings: Settings) -> None:
    queue = "illustrations.test-cap"
    broker = redis.Redis.from_url(settings.broker_url)
    broker.delete(queue)
    capped = settings.model_copy(update={"relay_delay_s": 0.0, "client_publish_cap": 2})
    publisher = Publisher(make_celery(settings, producer=True))
    ids = [add_job(db, queue=queue) for _ in range(1)]
    with db.begin() as session:
        client_id = session.get_one(Job, ids[0]).client_id
    ids += [add_job(db, queue=queue, client_id=client_id) for _ in range(3)]
    relay_unpublished(db, capped, publisher, batch=100_000)
    assert queued_ids(broker, queue) == ids[:2]
    relay_unpublished(db, capped, publisher, batch=100_000)
    assert queued_ids(broker, queue) == ids[:2]  # still full
    claim(db, ids[0])
    relay_unpublished(db, capped, publisher, batch=100_000)
    assert queued_ids(broker, queue) == [*ids[:3]]
    broker.delete(queue)


def test_the_sweep_cancels_overdue_queued_jobs(db: Database, settings: Settings) -> None:
    job_id = add_job(db, cancel_after=datetime.now(UTC) - timedelta(seconds=1))
    assert job_id in sweep(db, settings).deadline
    assert load(db, job_id).error_code == "deadline"
