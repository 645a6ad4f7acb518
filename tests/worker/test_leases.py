"""The one lease watch of a running attempt (``worker.leases``), on a generation job and on a training alike: real
PostgreSQL, real heartbeat thread."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from shared import jobs, training
from shared.db import Database
from shared.errors import CancelReason, ErrorCode
from shared.models import Job, StyleVersion
from shared.settings import Settings
from tests.helpers import add_job, wait_for
from worker.leases import Heartbeat, LeaseWatch
from worker.runtime import Runtime

ClaimTraining = Callable[[Database, str, float], training.TrainingClaim]  # the ``claimed_training`` fixture
WORKER = "lease-test"  # the workers of this module's claims: w1 holds the row, w2 takes it over


@pytest.fixture
def runtime(make_runtime: Callable[..., Runtime]) -> Runtime:
    return make_runtime(heartbeat_s=0.05, lease_s=30.0, progress_interval_s=3600.0)


@pytest.fixture(autouse=True)
def no_running_rows_left(db: Database) -> Iterator[None]:
    """Fails what this module's claims left running: the lease sweep tests see every row of the database."""
    yield
    left_jobs = select(Job.id).where(Job.status == "running", Job.worker.startswith(WORKER))
    left_trainings = select(StyleVersion.job_id).where(StyleVersion.status == "running",
                                                       StyleVersion.worker.startswith(WORKER))
    with db.begin() as session:
        for job_id in session.execute(left_jobs).scalars().all():
            jobs.failed_on_worker(session, job_id, WORKER, ErrorCode.INTERNAL, "the test is over")
        for training_id in session.execute(left_trainings).scalars().all():
            training.failed_on_worker(session, str(training_id), WORKER, ErrorCode.INTERNAL, "the test is over")


# --- The two kinds of leased rows ---------------------------------------------------------------------------------


def claim_job(db: Database, _: ClaimTraining) -> jobs.Claim:
    job_id = add_job(db)
    with db.begin() as session:
        claim = jobs.started(session, job_id, f"{WORKER}-w1", 1)  # a lease of one second: only renewals keep it
    assert isinstance(claim, jobs.Claim)
    return claim


def job_lease(db: Database, job_id: str) -> datetime | None:
    with db.begin() as session:
        return session.execute(select(Job.lease_until).where(Job.id == job_id)).scalar_one()


def cancel_job(db: Database, claim: jobs.Claim) -> None:
    with db.begin() as session:
        assert jobs.request_cancel(session, claim.job_id)


def take_job(db: Database, claim: jobs.Claim) -> None:
    with db.begin() as session:
        assert jobs.requeued(session, claim, "lease_expired")
        assert isinstance(jobs.started(session, claim.job_id, f"{WORKER}-w2", 60), jobs.Claim)


def claim_training(db: Database, claimed_training: ClaimTraining) -> training.TrainingClaim:
    return claimed_training(db, f"{WORKER}-w1", 1)  # a lease of one second: only renewals keep it


def training_lease(db: Database, job_id: str) -> datetime | None:
    with db.begin() as session:
        return session.execute(select(StyleVersion.lease_until).where(StyleVersion.job_id == job_id)).scalar_one()


def cancel_training(db: Database, claim: training.TrainingClaim) -> None:
    with db.begin() as session:
        assert training.cancel(session, claim.style_id, claim.version, CancelReason.CANCELED_BY_CLIENT) == "flagged"


def take_training(db: Database, claim: training.TrainingClaim) -> None:
    with db.begin() as session:
        assert training.requeued(session, claim, stopping=False)
        assert isinstance(training.claim(session, claim.job_id, f"{WORKER}-w2", 60), training.TrainingClaim)


@dataclass(frozen=True)
class Kind:
    name: str
    heartbeat: Heartbeat
    claim: Callable[[Database, ClaimTraining], Any]
    lease: Callable[[Database, str], datetime | None]
    cancel: Callable[[Database, Any], None]  # the client asks to cancel
    take: Callable[[Database, Any], None]  # the lease ran out and another attempt claimed the row


KINDS = [Kind("job", jobs.heartbeat, claim_job, job_lease, cancel_job, take_job),
         Kind("training", training.heartbeat, claim_training, training_lease, cancel_training, take_training)]


@pytest.fixture(params=KINDS, ids=[kind.name for kind in KINDS])
def kind(request: pytest.FixtureRequest) -> Kind:
    return request.param  # type: ignore[no-any-return]


def wait_for_stop(watch: LeaseWatch[Any]) -> str | None:
    deadline = time.monotonic() + 10
    while watch.stop_reason is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return watch.stop_reason


# --- Both kinds -----------------------------------------------------------------------------------------------------


def test_the_watch_renews_the_lease_on_its_timer(runtime: Runtime, db: Database, kind: Kind,
                                                 claimed_training: ClaimTraining) -> None:
    claim = kind.claim(db, claimed_training)
    with LeaseWatch(runtime, claim, kind.heartbeat, kind.name) as watch:

        def renewed() -> bool:  # the claim gave it one second, a renewal 30
            until = kind.lease(db, claim.job_id)
            return until is not None and until > datetime.now(UTC) + timedelta(seconds=20)

        wait_for(renewed, 10, "the lease renewed", interval_s=0.02)
        assert watch.stop_reason is None


def test_a_cancel_stops_the_watch_canceled(runtime: Runtime, db: Database, kind: Kind,
                                           claimed_training: ClaimTraining) -> None:
    claim = kind.claim(db, claimed_training)
    with LeaseWatch(runtime, claim, kind.heartbeat, kind.name) as watch:
        kind.cancel(db, claim)
        assert wait_for_stop(watch) == "canceled"


def test_a_row_another_attempt_took_stops_the_watch_lost(runtime: Runtime, db: Database, kind: Kind,
                                                         claimed_training: ClaimTraining) -> None:
    claim = kind.claim(db, claimed_training)
    watch = LeaseWatch(runtime, claim, kind.heartbeat, kind.name)  # not started: nothing renews the lease
    kind.take(db, claim)
    watch.renew()
    assert watch.stop_reason == "lost"


def test_a_renewal_the_database_refuses_is_logged_and_changes_nothing(
        settings: Settings, db: Database, kind: Kind, claimed_training: ClaimTraining,
        caplog: pytest.LogCaptureFixture) -> None:
    claim = kind.claim(db, claimed_training)
    down = Runtime(settings.model_copy(update={"database_url": "postgresql+psycopg2://postgres@127.0.0.1:1/x"}))
    watch = LeaseWatch(down, claim, kind.heartbeat, kind.name)
    with caplog.at_level(logging.WARNING, logger="worker.leases"):
        watch.renew()
    assert f"heartbeat of {kind.name} {claim.job_id} failed (OperationalError)" in caplog.text
    assert watch.stop_reason is None  # the next beat tries again: the lease has slack
    down.db.engine.dispose()


# --- Progress and stop reasons --------------------------------------------------------------------------------------


def test_a_progress_renewal_records_the_step_and_loss(runtime: Runtime, db: Database,
                                                      claimed_training: ClaimTraining) -> None:
    claim = claim_training(db, claimed_training)
    LeaseWatch(runtime, claim, training.heartbeat, "training").renew(step=3, loss=0.5)
    with db.begin() as session:
        row = session.execute(select(StyleVersion).where(StyleVersion.job_id == claim.job_id)).scalar_one()
    assert (row.progress_step, row.loss) == (3, 0.5)


def test_progress_is_due_once_per_interval(runtime: Runtime, db: Database, claimed_training: ClaimTraining) -> None:
    claim = claim_job(db, claimed_training)
    assert not LeaseWatch(runtime, claim, jobs.heartbeat, "job").progress_due()  # the claim recorded it just now
    runtime.settings = runtime.settings.model_copy(update={"progress_interval_s": 0.0})
    assert LeaseWatch(runtime, claim, jobs.heartbeat, "job").progress_due()


def job_progress(db: Database, job_id: str) -> int | None:
    with db.begin() as session:
        return session.execute(select(Job.progress_step).where(Job.id == job_id)).scalar_one()


def test_recorded_progress_is_written_by_the_watch_thread_at_most_once_per_interval(
        runtime: Runtime, db: Database, claimed_training: ClaimTraining) -> None:
    claim = claim_job(db, claimed_training)
    runtime.settings = runtime.settings.model_copy(update={"progress_interval_s": 1.5, "heartbeat_s": 60.0})
    seen: list[int | None] = []

    def written(step: int) -> bool:
        seen.append(job_progress(db, claim.job_id))
        return seen[-1] == step

    started = time.monotonic()  # the watch counts its first interval from its start (the claim wrote progress)
    with LeaseWatch(runtime, claim, jobs.heartbeat, "job") as watch:
        watch.record(step=2)
        wait_for(lambda: written(2), 10, "step 2 written", interval_s=0.02)
        assert time.monotonic() - started >= 1.5  # not before one interval: a slow machine only adds to this
        watch.record(step=3)
        watch.record(step=4)  # the latest one noted wins, one interval after the last write
        wait_for(lambda: written(4), 10, "step 4 written", interval_s=0.02)
        assert time.monotonic() - started >= 3.0  # the second write waited an interval after the first
    assert 3 not in seen and set(seen) <= {None, 0, 2, 4}


def test_a_heartbeat_carries_the_latest_recorded_progress(runtime: Runtime, db: Database,
                                                          claimed_training: ClaimTraining) -> None:
    claim = claim_job(db, claimed_training)  # the fixture's interval is an hour, its heartbeat 50 ms
    with LeaseWatch(runtime, claim, jobs.heartbeat, "job") as watch:
        watch.record(step=2)
        wait_for(lambda: job_progress(db, claim.job_id) == 2, 10, "step 2 written", interval_s=0.02)


def test_a_stop_reason_once_known_is_kept(runtime: Runtime, db: Database, claimed_training: ClaimTraining) -> None:
    watch = LeaseWatch(runtime, claim_job(db, claimed_training), jobs.heartbeat, "job")
    watch.stop("shutdown")
    watch.stop("stopping")
    assert watch.stop_reason == "shutdown"
