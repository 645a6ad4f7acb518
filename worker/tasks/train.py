"""The training task (training workers, ``illustrations.training`` queue): a job id in, logic in
``worker.training.run``. Its time limits are the training ones (``task_annotations`` in ``shared.queue``)."""

from __future__ import annotations

import logging
import os
from typing import Any

from billiard.einfo import ExceptionInfo
from billiard.exceptions import TimeLimitExceeded
from celery import Task

from shared import tasks
from shared.queue import Publisher
from worker import node
from worker.celery_app import app
from worker.runtime import get_runtime
from worker.training.stop import sigterm_stops_training

log = logging.getLogger(__name__)


class TrainTask(Task):
    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo) -> None:
        """At the hard time limit the pool child is killed and Celery calls this in the main process: the training
        would otherwise stay running until its lease expires and then resume."""
        if not isinstance(exc, TimeLimitExceeded) or not args or node.name is None:
            return
        from worker.training.run import fail_after_hard_time_limit

        if fail_after_hard_time_limit(get_runtime(), str(args[0]), node.name):
            log.warning("training %s failed: time_limit (hard)", args[0])


@app.task(name=tasks.TRAIN, ignore_result=True, bind=True, base=TrainTask)
def train(self: Task, job_id: str) -> str:
    from worker.training.run import run_training  # torch is imported here, not in CPU-only workers

    runtime = get_runtime()
    runtime.worker_name = f"{self.request.hostname}:{os.getpid()}"
    with sigterm_stops_training():  # SIGTERM: checkpoint, give the training back, return (worker.training.stop)
        return run_training(job_id, runtime, Publisher(app))
