"""The lifecycle around the state machine: the audit trail, deadlines, backoff, the relay's cap and fairness, the
broker-loss reset and queue positions, on PostgreSQL and SQLite."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import update

from shared import jobs
from shared.db import Database
from shared.errors import CancelReason
from shared.models import Job
from shared.settings import Settings
from shared.tasks import QUEUE_BATCH, QUEUE_INTERACTIVE
from tests.helpers import IMAGE, add_job, claim, load, new_client


def test_every_transition_is_recorded_once_with_its_reason(any_db: Database) -> None:
    job_id = add_job(any_db)
    first = claim(any_db, job_id)
    with any_db.begin() as session:
        assert jobs.requeued(session, first, "storage", delay_s=0)
    second = claim(any_db, job_id)
    with any_db.begin() as session:
        assert jobs.succeeded(session, second, [IMAGE])
        assert not jobs.succeeded(session, first, [IMAGE])  # a loser adds nothing to the trail
        assert not jobs.canceled(session, job_id, CancelReason.CANCELED_BY_CLIENT, second)
        trail = jobs.transitions(session, job_id)
    assert trail == [(None, "queued", 0, None), ("queued", "running", 1, None), ("running", "queued", 1, "storage"),
                     ("queued", "running", 2, None), ("running", "succeeded", 2, None)]


def test_the_sweep_cancels_queued_jobs_past_their_deadline(any_db: Database) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    overdue = add_job(any_db, cancel_after=past)
    future = add_job(any_db, cancel_after=datetime.now(UTC) + timedelta(hours=1))
    started = add_job(any_db, cancel_after=datetime.now(UTC) + timedelta(seconds=30))
    claim(any_db, started)
    with any_db.begin() as session:
        session.execute(update(Job).where(Job.id == started).values(cancel_after=past))
        canceled = jobs.expire_deadlines(session)
        assert overdue in canceled
        assert future not in canceled
        assert started not in canceled
        assert jobs.transitions(session, overdue)[-1] == ("queued", "canceled", 0, "deadline")
    job = load(any_db, overdue)
    assert job.status == "canceled"
    assert job.error_code == "deadline"
    assert job.finished_at is not None
    assert load(any_db, started).status == "running"  # started in time: a deadline is about starting
    with any_db.begin() as session:
        assert overdue not in jobs.expire_deadlines(session)


def test_a_job_given_back_waits_for_its_backoff(any_db: Database) -> None:
    queue = f"q-{time.monotonic_ns()}"
    job_id = add_job(any_db, queue=queue)
    with any_db.begin() as session:
        assert jobs.requeued(session, claim(any_db, job_id), "storage", delay_s=60)
        assert (job_id, queue) not in jobs.unpublished(session, 0, limit=100_000)
        session.execute(update(Job).where(Job.id == job_id).values(not_before=datetime.now(UTC) - timedelta(1)))
        assert (job_id, queue) in jobs.unpublished(session, 0, limit=100_000)


def test_the_relay_caps_each_client_and_interleaves_clients(any_db: Database) -> None:
    queue = f"q-{time.monotonic_ns()}"
    busy, quiet = new_client(any_db), new_client(any_db)
    busy_jobs = [add_job(any_db, queue=queue, client_id=busy) for _ in range(5)]
    quiet_jobs = [add_job(any_db, queue=queue, client_id=quiet) for _ in range(2)]

    def due(cap: int) -> list[str]:
        with any_db.begin() as session:
            return [job_id for job_id, q in jobs.unpublished(session, 0, limit=100_000, cap=cap) if q == queue]

    # Round robin: each client's oldest, then each one's second oldest, ... (one backlog does not starve others).
    assert due(0) == [busy_jobs[0], quiet_jobs[0], busy_jobs[1], quiet_jobs[1], *busy_jobs[2:]]
    assert due(2) == [busy_jobs[0], quiet_jobs[0], busy_jobs[1], quiet_jobs[1]]
    with any_db.begin() as session:
        assert jobs.mark_all_published(session, [busy_jobs[0]]) == 1
        assert not jobs.has_room(session, busy, queue, cap=1)
        assert jobs.has_room(session, busy, queue, cap=2)
        assert jobs.has_room(session, quiet, queue, cap=1)
        assert jobs.has_room(session, busy, queue, cap=0)  # 0: no cap
    assert due(2) == [busy_jobs[1], quiet_jobs[0], quiet_jobs[1]]  # busy: one waiting + one more
    claim(any_db, busy_jobs[0])  # a worker took it: the client has room again
    assert due(2) == [busy_jobs[1], quiet_jobs[0], busy_jobs[2], quiet_jobs[1]]


def test_stale_publishes_and_a_broker_that_lost_its_data(any_db: Database) -> None:
    queue = f"q-{time.monotonic_ns()}"
    job_id = add_job(any_db, queue=queue)
    with any_db.begin() as session:
        jobs.mark_all_published(session, [job_id])
        assert (job_id, queue) not in jobs.stale(session, 60, limit=100_000)
        session.execute(update(Job).where(Job.id == job_id)
                        .values(published_at=datetime.now(UTC) - timedelta(seconds=120)))
        assert (job_id, queue) in jobs.stale(session, 60, limit=100_000)
        assert jobs.forget_publishes(session) >= 1
        assert (job_id, queue) in jobs.unpublished(session, 0, limit=100_000)


def test_queue_position_puts_interactive_before_batch(sqlite_settings: Settings) -> None:
    database = Database(sqlite_settings)
    batch = [add_job(database, queue=QUEUE_BATCH, priority="batch") for _ in range(2)]
    interactive = [add_job(database, queue=QUEUE_INTERACTIVE) for _ in range(3)]
    with database.begin() as session:
        def position(job_id: str) -> int | None:
            return jobs.queue_position(session, session.get_one(Job, job_id))

        assert [position(job_id) for job_id in interactive] == [0, 1, 2]
        assert [position(job_id) for job_id in batch] == [3, 4]  # every interactive job goes first
    database.engine.dispose()
