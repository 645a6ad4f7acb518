"""Operator actions in the database: a paused client's jobs are neither published nor run, retry-failed makes new
jobs (terminal states never change), bulk cancel uses the same transitions as a client's cancel."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from cli import ops_actions
from shared import jobs
from shared.db import Database
from shared.errors import ErrorCode
from shared.models import Client, Job, PausedQueue
from tests.helpers import add_job, claim, load, unpublished_ids

# The lease of a job a test leaves running: longer than the session, so another test's lease sweep over the shared
# database (tests/shared/test_webhooks.py counts what it expires) never finds it expired.
LEFT_RUNNING_S = 3600.0


def client_name(database: Database, job_id: str) -> str:
    with database.begin() as session:
        return session.execute(select(Client.name).join(Job, Job.client_id == Client.id)
                               .where(Job.id == job_id)).scalar_one()


def test_a_paused_client_is_neither_published_nor_run(any_db: Database) -> None:
    job_id = add_job(any_db)
    name = client_name(any_db, job_id)
    with any_db.begin() as session:
        assert ops_actions.set_client_paused(session, name, True)
        assert not ops_actions.set_client_paused(session, name, True)  # already
        jobs.mark_published(session, job_id)  # its message was in the broker before the pause
    with any_db.begin() as session:
        assert job_id not in unpublished_ids(session, -1)
        assert jobs.started(session, job_id, "w1", 60) == jobs.ClaimRefused.PAUSED
    job = load(any_db, job_id)
    assert job.status == "queued"
    assert job.published_at is None
    assert job.attempt == 0
    with any_db.begin() as session:
        assert job_id not in unpublished_ids(session, -1)  # still held
        assert ops_actions.set_client_paused(session, name, False)
    with any_db.begin() as session:
        assert job_id in unpublished_ids(session, -1)  # the relay publishes it now
    assert claim(any_db, job_id, lease_s=LEFT_RUNNING_S).attempt == 1
    with any_db.begin() as session, pytest.raises(ops_actions.UnknownClient):
        ops_actions.set_client_paused(session, "no-such-client", True)


def test_paused_queues_are_recorded_once(any_db: Database) -> None:
    with any_db.begin() as session:
        assert ops_actions.pause_queue(session, "illustrations.batch")
        assert not ops_actions.pause_queue(session, "illustrations.batch")
    with any_db.begin() as session:
        assert session.execute(select(PausedQueue.name)).scalars().all() == ["illustrations.batch"]
        assert ops_actions.resume_queue(session, "illustrations.batch")
        assert not ops_actions.resume_queue(session, "illustrations.batch")


def test_retry_failed_submits_new_jobs_and_leaves_the_failed_ones(any_db: Database) -> None:
    failed_oom, failed_lost, succeeded = add_job(any_db), add_job(any_db), add_job(any_db)
    for job_id, code in ((failed_oom, ErrorCode.OUT_OF_MEMORY), (failed_lost, ErrorCode.WORKER_LOST)):
        held = claim(any_db, job_id)
        with any_db.begin() as session:
            jobs.failed(session, held, code, "x")
    held = claim(any_db, succeeded)
    with any_db.begin() as session:
        jobs.succeeded(session, held, [])
    name = client_name(any_db, failed_lost)
    with any_db.begin() as session:
        created = ops_actions.retry_failed(session, ops_actions.JobFilter(client=name, codes=["worker_lost"],
                                                          newer_than=timedelta(hours=1)))
    assert [(old, queue) for old, _, queue in created] == [(failed_lost, "illustrations.interactive")]
    new = load(any_db, created[0][1])
    old = load(any_db, failed_lost)
    assert new.status == "queued"
    assert new.attempt == 0
    assert new.published_at is None
    assert new.request["retry_of"] == failed_lost
    assert new.seed == old.seed
    assert new.user_id == old.user_id
    assert old.status == "failed"  # terminal states never change
    with any_db.begin() as session:
        assert ops_actions.retry_failed(session, ops_actions.JobFilter(client=name, codes=["worker_lost"],
                                                       older_than=timedelta(hours=1))) == []


def test_bulk_cancel_cancels_queued_and_flags_running(any_db: Database) -> None:
    queued, running = add_job(any_db, user_id="u-bulk"), add_job(any_db, user_id="u-bulk")
    claim(any_db, running, lease_s=LEFT_RUNNING_S)
    name = client_name(any_db, queued)
    other_client_job = add_job(any_db, user_id="u-bulk")
    with any_db.begin() as session:
        canceled, flagged = ops_actions.cancel(session, ops_actions.JobFilter(user_id="u-bulk", client=name))
    assert (canceled, flagged) == ([queued], [])  # each add_job makes its own client: the running one is another's
    name_running = client_name(any_db, running)
    with any_db.begin() as session:
        canceled, flagged = ops_actions.cancel(session, ops_actions.JobFilter(client=name_running))
    assert (canceled, flagged) == ([], [running])
    job = load(any_db, queued)
    assert job.status == "canceled"
    assert job.error_code == "canceled_by_client"
    assert job.error_message == "canceled by an operator"
    assert load(any_db, running).cancel_requested
    assert load(any_db, other_client_job).status == "queued"
