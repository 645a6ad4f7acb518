"""A style version's training as a job: every transition a fenced UPDATE, on PostgreSQL and SQLite alike."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared import tasks, training
from shared.db import Database, utcnow
from shared.errors import CancelReason, ErrorCode
from shared.models import Style, StyleVersion
from tests.helpers import TRAINING_PARAMS, active_version, new_client, style_version


def queue_training(db: Database, client_id: str, name: str = "ink", queue: str = tasks.QUEUE_TRAINING) -> str:
    with db.begin() as session:
        row = training.new_training(session, client_id, name, TRAINING_PARAMS, base_profile="tiny", queue=queue)
        assert row.job_id is not None
        return row.job_id


def claim(db: Database, job_id: str, lease_s: float = 60) -> training.TrainingClaim:
    with db.begin() as session:
        result = training.claim(session, job_id, "w1:1", lease_s)
    assert isinstance(result, training.TrainingClaim), result
    return result


def finish(db: Database, held: training.TrainingClaim) -> bool:
    with db.begin() as session:
        return training.ready(session, held, storage_key=f"styles/{held.style_id}/{held.version}/lora.safetensors",
                              sha256="ab" * 32, size_bytes=10, rank=4, alpha=4.0, base_profile="tiny", loss=0.5)


def test_versions_number_up_and_start_queued_with_their_params(any_db: Database) -> None:
    client_id = new_client(any_db)
    first, second = queue_training(any_db, client_id), queue_training(any_db, client_id)
    rows = style_version(any_db, first), style_version(any_db, second)
    assert [row.version for row in rows] == [1, 2]
    assert rows[0].style_id == rows[1].style_id
    assert (rows[0].status, rows[0].source, rows[0].attempt) == ("queued", "training", 0)
    assert rows[0].queue == tasks.QUEUE_TRAINING
    assert rows[0].params == TRAINING_PARAMS
    assert (rows[0].progress_step, rows[0].progress_total) == (0, 10)
    assert active_version(any_db, rows[0].style_id) is None  # nothing is active before a version is ready


def test_claim_progress_and_ready_makes_it_active(any_db: Database) -> None:
    job_id = queue_training(any_db, new_client(any_db))
    held = claim(any_db, job_id)
    assert held.attempt == 1
    assert held.params == TRAINING_PARAMS
    assert held.checkpoint_step is None
    with any_db.begin() as session:
        assert training.claim(session, job_id, "w2:1", 60) == "leased"  # a re-delivery while it runs
        assert training.heartbeat(session, held, 60, step=4, loss=0.25) is False
    row = style_version(any_db, job_id)
    assert row.status == "running"
    assert row.progress_step == 4
    assert row.loss == 0.25
    assert row.worker == "w1:1"
    assert row.started_at is not None
    assert finish(any_db, held)
    row = style_version(any_db, job_id)
    assert row.status == "ready"
    assert row.progress_step == 10
    assert row.loss == 0.5
    assert row.finished_at is not None
    assert active_version(any_db, row.style_id) == 1
    with any_db.begin() as session:
        assert training.claim(session, job_id, "w2:1", 60) == "terminal"
        assert training.claim(session, "no-such-job", "w2:1", 60) == "missing"


def test_a_failure_leaves_the_previous_version_active_and_an_older_one_never_replaces_a_newer(
        any_db: Database) -> None:
    client_id = new_client(any_db)
    one, two, three = (queue_training(any_db, client_id) for _ in range(3))
    held_one, held_two, held_three = claim(any_db, one), claim(any_db, two), claim(any_db, three)
    assert finish(any_db, held_two)
    style_id = held_two.style_id
    assert active_version(any_db, style_id) == 2
    with any_db.begin() as session:
        assert training.failed(session, held_three, ErrorCode.INTERNAL, "the loss was not finite")
    assert active_version(any_db, style_id) == 2
    assert finish(any_db, held_one)  # version 1 finishes last: ready, but the newer version stays active
    assert active_version(any_db, style_id) == 2
    assert style_version(any_db, one).status == "ready"


def sweep_of(session: Session, job_id: str, max_attempts: int) -> tuple[bool, bool]:
    """What the lease sweep did to this training: (re-queued, failed). The database is shared by the session's
    tests, so other trainings may be swept too."""
    requeued, failed = training.expire_leases(session, max_attempts=max_attempts)
    return job_id in requeued, job_id in failed


def test_only_the_attempt_holding_the_lease_records_anything(any_db: Database) -> None:
    job_id = queue_training(any_db, new_client(any_db))
    old = claim(any_db, job_id, lease_s=-1)  # already expired
    with any_db.begin() as session:
        assert sweep_of(session, job_id, 3) == (True, False)
    new = claim(any_db, job_id)
    assert new.attempt == 2
    with any_db.begin() as session:
        assert training.heartbeat(session, old, 60, step=9) is None  # lost
        assert not training.checkpointed(session, old, 5)
        assert not training.requeued(session, old, stopping=True)
        assert not training.failed(session, old, ErrorCode.INTERNAL, "x")
    assert not finish(any_db, old)
    assert finish(any_db, new)


def test_checkpoint_then_give_back_on_sigterm_resumes_and_is_not_a_lost_attempt(any_db: Database) -> None:
    job_id = queue_training(any_db, new_client(any_db))
    for attempt in range(1, 6):  # more give-backs than max_attempts: none of them is a lost attempt
        held = claim(any_db, job_id)
        assert held.attempt == attempt
        assert held.checkpoint_step == (None if attempt == 1 else attempt - 1)
        with any_db.begin() as session:
            assert training.checkpointed(session, held, attempt)
            assert training.requeued(session, held, stopping=True)
        row = style_version(any_db, job_id)
        assert row.status == "queued"
        assert row.published_at is None
        assert row.requeues == attempt
        assert row.checkpoint_step == attempt
    held = claim(any_db, job_id, lease_s=-1)
    assert style_version(any_db, job_id).progress_step == 5  # the count continues from the checkpoint
    with any_db.begin() as session:
        assert sweep_of(session, job_id, 2) == (True, False)  # 1 lost attempt so far
    claim(any_db, job_id, lease_s=-1)
    with any_db.begin() as session:
        assert sweep_of(session, job_id, 2) == (False, True)
    row = style_version(any_db, job_id)
    assert (row.status, row.error_code, row.checkpoint_step) == ("failed", "worker_lost", None)


def test_cancel_queued_running_and_finished(any_db: Database) -> None:
    client_id = new_client(any_db)
    queued, running, done = (queue_training(any_db, client_id) for _ in range(3))
    held = claim(any_db, running)
    finish(any_db, claim(any_db, done))
    key = {job_id: (style_version(any_db, job_id).style_id, style_version(any_db, job_id).version)
           for job_id in (queued, running, done)}
    with any_db.begin() as session:
        assert training.cancel(session, *key[queued], CancelReason.CANCELED_BY_CLIENT) == "canceled"
        assert training.cancel(session, *key[running], CancelReason.USER_DELETED) == "flagged"
        assert training.cancel(session, *key[running], CancelReason.CANCELED_BY_CLIENT) == "flagged"
        assert training.cancel(session, *key[done], CancelReason.CANCELED_BY_CLIENT) == "unchanged"
        assert training.heartbeat(session, held, 60) is True  # the worker reads the flag
        assert training.canceled_running(session, held)
    row = style_version(any_db, queued)
    assert (row.status, row.error_code, row.error_message) == ("canceled", "canceled_by_client",
                                                                "canceled by the client")
    row = style_version(any_db, running)  # the first reason given stays
    assert (row.status, row.error_code) == ("canceled", "user_deleted")
    assert row.error_message == "pictures of its training set belonged to a deleted user"
    assert style_version(any_db, done).status == "ready"


def test_preparation_hands_over_to_the_training_queue(any_db: Database) -> None:
    client_id = new_client(any_db)
    job_id = queue_training(any_db, client_id, queue=tasks.QUEUE_PREPARE)
    failing = queue_training(any_db, client_id, queue=tasks.QUEUE_PREPARE)
    with any_db.begin() as session:
        assert training.claim(session, job_id, "w", 60) == "preparing"  # not before its pictures are stored
        assert training.mark_published(session, job_id)
        assert training.prepared(session, job_id)
        assert not training.prepared(session, job_id)
        assert training.preparation_failed(session, failing, ErrorCode.REFERENCE_UNREACHABLE, "images.2: timeout")
    row = style_version(any_db, job_id)
    assert (row.queue, row.published_at) == (tasks.QUEUE_TRAINING, None)  # the relay (or the caller) publishes
    assert style_version(any_db, failing).status == "failed"
    claim(any_db, job_id)


def test_unpublished_waits_for_the_delay_and_mark_published(any_db: Database) -> None:
    job_id = queue_training(any_db, new_client(any_db))
    with any_db.begin() as session:
        assert job_id not in dict(training.unpublished(session, older_than_s=60))
        session.execute(update(StyleVersion).where(StyleVersion.job_id == job_id)
                        .values(created_at=utcnow(-120)).execution_options(synchronize_session=False))
    with any_db.begin() as session:
        assert dict(training.unpublished(session, older_than_s=60))[job_id] == tasks.QUEUE_TRAINING
        assert training.mark_published(session, job_id)
        assert job_id not in dict(training.unpublished(session, older_than_s=60))


def test_the_hard_time_limit_fails_only_this_workers_attempt(any_db: Database) -> None:
    job_id = queue_training(any_db, new_client(any_db))
    claim(any_db, job_id)
    with any_db.begin() as session:
        assert not training.failed_on_worker(session, job_id, "w2:", ErrorCode.TIME_LIMIT, "x")
        assert training.failed_on_worker(session, job_id, "w1:", ErrorCode.TIME_LIMIT, "stopped at the limit")
    assert style_version(any_db, job_id).error_code == "time_limit"


def test_illegal_transitions_are_refused() -> None:
    with pytest.raises(ValueError, match="ready -> running"):
        training._check("ready", "running")


def test_the_deletion_part_removes_a_users_pictures_and_marks_the_versions(any_db: Database, tmp_path: Any) -> None:
    from shared.deletion.training import delete_training_images
    from shared.models import TrainingImage
    from shared.storage.local import LocalStorage

    storage = LocalStorage(str(tmp_path / "store"))
    client_id = new_client(any_db)
    done, running = queue_training(any_db, client_id), queue_training(any_db, client_id)
    finish(any_db, claim(any_db, done))
    held = claim(any_db, running)
    with any_db.begin() as session:
        for job_id in (done, running):
            version = session.execute(select(StyleVersion).where(StyleVersion.job_id == job_id)).scalar_one()
            for index, user in enumerate(("u-gone", "u-kept", "u-gone")):
                key = training.image_key(version.style_id, version.version, index)
                storage.put(key, b"png", "image/png")
                session.add(TrainingImage(style_id=version.style_id, version=version.version, index=index,
                                          source="upload", user_id=user, caption="c", storage_key=key))
    other_client = new_client(any_db)
    with any_db.begin() as session:
        assert delete_training_images(session, storage, client_id, "u-gone") == 4
        assert delete_training_images(session, storage, other_client, "u-kept") == 0  # another client's
    with any_db.begin() as session:
        left = session.execute(
            select(TrainingImage.user_id, TrainingImage.storage_key).join(Style, Style.id == TrainingImage.style_id)
            .where(Style.client_id == client_id)
        ).all()
    assert sorted(user for user, _ in left) == ["u-kept", "u-kept"]
    assert sorted(p.name for p in (tmp_path / "store").rglob("*.png")) == ["1.png", "1.png"]
    assert style_version(any_db, done).training_data_deleted_at is not None
    assert style_version(any_db, done).status == "ready"
    with any_db.begin() as session:
        assert training.heartbeat(session, held, 60) is True  # the running one is told to stop
        assert training.canceled_running(session, held)
    assert style_version(any_db, running).error_code == "user_deleted"
