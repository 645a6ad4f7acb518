"""The job state machine: every transition a fenced UPDATE, on PostgreSQL and SQLite alike."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from shared import jobs
from shared.db import Database, utcnow
from shared.errors import CancelReason, ErrorCode
from shared.models import Job, JobImage
from shared.states import TERMINAL, IllegalTransition, JobStatus, check_transition
from tests.helpers import IMAGE, add_job, claim, load, unpublished_ids


def test_the_transition_table() -> None:
    check_transition(None, JobStatus.QUEUED)
    check_transition(JobStatus.QUEUED, JobStatus.RUNNING)
    check_transition(JobStatus.RUNNING, JobStatus.QUEUED)
    for terminal in TERMINAL:
        assert terminal.is_terminal()
        for target in JobStatus:
            with pytest.raises(IllegalTransition):
                check_transition(terminal, target)
    check_transition(JobStatus.QUEUED, JobStatus.SUCCEEDED)  # a follower finishing with its leader (shared.cache)
    with pytest.raises(IllegalTransition):
        check_transition(None, JobStatus.RUNNING)
    assert not JobStatus.QUEUED.is_terminal()
    assert not JobStatus.RUNNING.is_terminal()


def test_claim_sets_attempt_lease_and_worker(any_db: Database) -> None:
    job_id = add_job(any_db)
    got = claim(any_db, job_id, lease_s=60)
    assert got.attempt == 1
    job = load(any_db, job_id)
    now = datetime.now(UTC)
    assert job.status == "running"
    assert job.worker == "w1"
    assert job.lease_until is not None
    assert now + timedelta(seconds=50) < job.lease_until < now + timedelta(seconds=70)
    assert job.started_at is not None
    assert abs((job.started_at - now).total_seconds()) < 5


def test_a_second_claim_is_refused_while_leased_and_after_the_end(any_db: Database) -> None:
    job_id = add_job(any_db)
    first = claim(any_db, job_id)
    with any_db.begin() as session:
        assert jobs.started(session, job_id, "w2", 60) is jobs.ClaimRefused.LEASED
    with any_db.begin() as session:
        assert jobs.succeeded(session, first, [IMAGE])
    with any_db.begin() as session:
        assert jobs.started(session, job_id, "w2", 60) is jobs.ClaimRefused.TERMINAL
        assert jobs.started(session, "no-such-job", "w2", 60) is jobs.ClaimRefused.MISSING


def test_only_the_lease_holder_finishes(any_db: Database) -> None:
    job_id = add_job(any_db)
    stale = claim(any_db, job_id, lease_s=-1)  # its lease has already run out
    with any_db.begin() as session:
        assert jobs.expire_leases(session, max_attempts=3) == ([job_id], [])
    fresh = claim(any_db, job_id)
    assert fresh.attempt == 2
    with any_db.begin() as session:
        assert jobs.succeeded(session, stale, [IMAGE]) is False
        assert jobs.failed(session, stale, ErrorCode.INTERNAL, "x") is False
        assert jobs.heartbeat(session, stale, 60) is None  # the stale attempt learns it lost the job
    winner = jobs.StoredImage(**{**IMAGE.__dict__, "storage_key": "jobs/x/2/0.png"})
    with any_db.begin() as session:
        assert jobs.succeeded(session, fresh, [winner])
    with any_db.begin() as session:
        assert jobs.succeeded(session, fresh, [winner]) is False  # terminal states never change
        keys = session.execute(select(JobImage.storage_key).where(JobImage.job_id == job_id)).scalars().all()
    assert keys == ["jobs/x/2/0.png"]
    job = load(any_db, job_id)
    assert job.status == "succeeded"
    assert job.attempt == 2
    assert job.finished_at is not None


def test_expired_leases_fail_after_the_last_attempt(any_db: Database) -> None:
    job_id = add_job(any_db)
    for attempt in (1, 2):
        assert claim(any_db, job_id, lease_s=-1).attempt == attempt
        with any_db.begin() as session:
            assert jobs.expire_leases(session, max_attempts=2)[0] == ([job_id] if attempt < 2 else [])
    job = load(any_db, job_id)
    assert job.status == "failed"
    assert job.error_code == ErrorCode.WORKER_LOST.value


def test_live_leases_are_not_expired(any_db: Database) -> None:
    job_id = add_job(any_db)
    claim(any_db, job_id, lease_s=60)
    with any_db.begin() as session:
        assert jobs.expire_leases(session, max_attempts=3) == ([], [])


def test_requeue_clears_the_publish_mark(any_db: Database) -> None:
    job_id = add_job(any_db)
    with any_db.begin() as session:
        assert jobs.mark_published(session, job_id)
        assert job_id not in unpublished_ids(session, 0)
    got = claim(any_db, job_id)
    with any_db.begin() as session:
        assert jobs.requeued(session, got, "test")
        assert job_id in unpublished_ids(session, 0)
    assert load(any_db, job_id).status == "queued"


def test_unpublished_waits_for_the_delay(any_db: Database) -> None:
    job_id = add_job(any_db)
    with any_db.begin() as session:
        assert job_id not in unpublished_ids(session, 30)
        assert job_id in unpublished_ids(session, 0)


def test_cancel_queued_and_running(any_db: Database) -> None:
    queued = add_job(any_db)
    with any_db.begin() as session:
        assert jobs.canceled(session, queued, CancelReason.CANCELED_BY_CLIENT)
        assert jobs.canceled(session, queued, CancelReason.CANCELED_BY_CLIENT) is False
    assert load(any_db, queued).error_code == "canceled_by_client"

    running = add_job(any_db)
    got = claim(any_db, running)
    with any_db.begin() as session:
        assert jobs.canceled(session, running, CancelReason.CANCELED_BY_CLIENT) is False  # needs the claim
        assert jobs.heartbeat(session, got, 60) is False
        assert jobs.request_cancel(session, running)
        assert jobs.heartbeat(session, got, 60, step=3) is True
        assert jobs.canceled(session, running, CancelReason.CANCELED_BY_CLIENT, got)
    job = load(any_db, running)
    assert job.status == "canceled"
    assert job.progress_step == 3


def test_a_deadline_passed_before_start_cancels(any_db: Database) -> None:
    job_id = add_job(any_db, cancel_after=datetime.now(UTC) - timedelta(seconds=1))
    with any_db.begin() as session:
        assert jobs.started(session, job_id, "w1", 60) is jobs.ClaimRefused.DEADLINE
    job = load(any_db, job_id)
    assert job.status == "canceled"
    assert job.error_code == CancelReason.DEADLINE.value
    future = add_job(any_db, cancel_after=datetime.now(UTC) + timedelta(hours=1))
    assert claim(any_db, future).attempt == 1


def test_concurrent_claims_have_one_winner(any_db: Database) -> None:
    job_id = add_job(any_db)
    results: list[object] = []
    barrier = threading.Barrier(4)

    def race(name: str) -> None:
        barrier.wait()
        with any_db.begin() as session:
            results.append(jobs.started(session, job_id, name, 60))

    threads = [threading.Thread(target=race, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(isinstance(result, jobs.Claim) for result in results) == 1
    assert sorted(str(result) for result in results if not isinstance(result, jobs.Claim)) == ["leased"] * 3


def test_queue_position_counts_earlier_queued_jobs(any_db: Database) -> None:
    queue = f"q-{time.monotonic_ns()}"
    ids = [add_job(any_db, queue=queue) for _ in range(3)]
    with any_db.begin() as session:
        positions = [jobs.queue_position(session, session.get_one(Job, job_id)) for job_id in ids]
    assert positions == [0, 1, 2]
    claim(any_db, ids[0])
    with any_db.begin() as session:
        assert jobs.queue_position(session, session.get_one(Job, ids[2])) == 1
        assert jobs.queue_position(session, session.get_one(Job, ids[0])) is None


def test_utcnow_is_the_database_clock_with_offsets(any_db: Database) -> None:
    with any_db.begin() as session:
        now, later, earlier = session.execute(select(utcnow(), utcnow(90), utcnow(-2.5))).one()
    assert now.tzinfo is not None
    assert abs((now - datetime.now(UTC)).total_seconds()) < 5
    assert abs((later - now).total_seconds() - 90) < 0.01
    assert abs((now - earlier).total_seconds() - 2.5) < 0.01
