"""What ends an attempt early (``worker.limits``), for generation and training alike: the one out-of-memory
detector, on the exception types both runs see, and the tasks' answer to Celery's hard time limit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from billiard.exceptions import TimeLimitExceeded
from celery import Task
from sqlalchemy import select

from shared import jobs, training
from shared.db import Database
from shared.models import Job, StyleVersion
from shared.settings import Settings
from tests.helpers import add_job
from worker.limits import is_out_of_memory
from worker.runtime import Runtime

ClaimTraining = Callable[[Database, str, float], training.TrainingClaim]  # the ``claimed_training`` fixture


def test_the_cuda_allocators_error_is_out_of_memory() -> None:
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))


def test_torchs_device_neutral_name_is_the_same_error() -> None:
    assert is_out_of_memory(torch.OutOfMemoryError("out of memory"))


def test_the_hosts_memory_error_is_not_the_gpus() -> None:
    assert not is_out_of_memory(MemoryError())


def test_another_runtime_error_is_not_out_of_memory() -> None:
    assert not is_out_of_memory(RuntimeError("expected all tensors to be on the same device"))


@pytest.fixture
def runtime(make_runtime: Callable[..., Runtime]) -> Runtime:
    return make_runtime()  # no model: nothing here generates


def running_job(db: Database, claimed_training: ClaimTraining, worker: str) -> tuple[Task, str]:
    from worker.tasks.generate import generate

    job_id = add_job(db)
    with db.begin() as session:
        assert isinstance(jobs.started(session, job_id, worker, 60), jobs.Claim)
    return generate, job_id


def running_training(db: Database, claimed_training: ClaimTraining, worker: str) -> tuple[Task, str]:
    from worker.tasks.train import train

    return train, claimed_training(db, worker, 60).job_id


def row_of(db: Database, key: Any, job_id: str) -> tuple[str, str | None, str | None]:
    """(status, error_code, error_message) of the row whose ``key`` column is ``job_id``."""
    table = key.class_
    with db.begin() as session:
        row = session.execute(select(table.status, table.error_code, table.error_message).where(key == job_id)).one()
    return row.status, row.error_code, row.error_message


@pytest.mark.parametrize(("start", "key", "work", "limit"), [
    (running_job, Job.id, "generation", lambda settings: settings.task_time_limit_s),
    (running_training, StyleVersion.job_id, "training", lambda settings: settings.training_time_limit_s),
], ids=["generation", "training"])
def test_the_task_fails_its_row_when_celery_reports_the_hard_time_limit(
        runtime: Runtime, db: Database, claimed_training: ClaimTraining, main_process: Callable[[Runtime, str], None],
        start: Callable[[Database, ClaimTraining, str], tuple[Task, str]], key: Any, work: str,
        limit: Callable[[Settings], float]) -> None:
    """Celery (celery.worker.request.Request.on_timeout) calls the task's on_failure in the worker's main process
    with TimeLimitExceeded after killing the pool child; the node name comes from celeryd_after_setup."""
    task, job_id = start(db, claimed_training, "gpu2@host-b:99")
    main_process(runtime, "gpu2@host-b")
    task.on_failure(ValueError("not a time limit"), "task-1", [job_id], {}, None)
    assert row_of(db, key, job_id)[0] == "running"
    task.on_failure(TimeLimitExceeded(660), "task-1", [job_id], {}, None)
    status, code, message = row_of(db, key, job_id)
    assert (status, code) == ("failed", "time_limit")
    assert message == f"the {work} was stopped at the hard time limit of {limit(runtime.settings)} s"
