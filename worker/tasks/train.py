"""The training task (training workers, ``illustrations.training`` queue): a job id in, logic in
``worker.training.run``. Its time limits are the training ones (``task_annotations`` in ``shared.queue``)."""

from __future__ import annotations

import os

from celery import Task

from shared import tasks
from shared.queue import Publisher
from worker import limits
from worker.celery_app import app
from worker.runtime import get_runtime
from worker.training.stop import sigterm_stops_training


class TrainTask(limits.HardTimeLimitTask):
    hard_time_limit = limits.TRAINING  # the training fails time_limit, instead of resuming after its lease


@app.task(name=tasks.TRAIN, ignore_result=True, bind=True, base=TrainTask)
def train(self: Task, job_id: str) -> str:
    from worker.training.run import run_training  # torch is imported here, not in CPU-only workers

    runtime = get_runtime()
    runtime.worker_name = f"{self.request.hostname}:{os.getpid()}"
    with sigterm_stops_training():  # SIGTERM: checkpoint, give the training back, return (worker.training.stop)
        return run_training(job_id, runtime, Publisher(app))
