"""The generation task: one job id in, the logic in ``worker.generation``."""

from __future__ import annotations

import logging
import os
from typing import Any

from billiard.einfo import ExceptionInfo
from billiard.exceptions import TimeLimitExceeded
from celery import Task

from shared import tasks
from worker import lifecycle
from worker.celery_app import app
from worker.runtime import get_runtime

log = logging.getLogger(__name__)


class GenerateTask(Task):
    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo) -> None:
        """At the hard time limit the pool child is killed and Celery calls this in the main process: the job
        would otherwise stay running until its lease expires and then run again."""
        if not isinstance(exc, TimeLimitExceeded) or not args or lifecycle.node_name is None:
            return
        from worker.generation import fail_after_hard_time_limit

        if fail_after_hard_time_limit(get_runtime(), str(args[0]), lifecycle.node_name):
            log.warning("job %s failed: time_limit (hard)", args[0])


@app.task(name=tasks.GENERATE, ignore_result=True, bind=True, base=GenerateTask)
def generate(self: Task, job_id: str) -> str:
    from worker.generation import run_generation  # torch is imported here, not in CPU-only workers

    runtime = get_runtime()
    runtime.worker_name = f"{self.request.hostname}:{os.getpid()}"
    return run_generation(job_id, runtime)
