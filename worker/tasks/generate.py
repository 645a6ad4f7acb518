"""The generation task: one job id in, the logic in ``worker.generation``."""

from __future__ import annotations

import logging
import os
import random
import time

from celery import Task
from celery.exceptions import Reject

from shared import tasks
from shared.db import is_unavailable
from worker import limits, observability
from worker.celery_app import app
from worker.lifecycle import watch_for_stop
from worker.runtime import get_runtime

log = logging.getLogger(__name__)


class GenerateTask(limits.HardTimeLimitTask):
    hard_time_limit = limits.GENERATION  # the job fails time_limit, instead of running again after its lease


@app.task(name=tasks.GENERATE, ignore_result=True, bind=True, base=GenerateTask)
def generate(self: Task, job_id: str) -> str:
    from worker.generation import run_generation  # torch is imported here, not in CPU-only workers

    runtime = get_runtime()
    runtime.worker_name = f"{self.request.hostname}:{os.getpid()}"
    watch_for_stop(runtime)
    try:
        outcome = run_generation(job_id, runtime)
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        # The database is down: nothing was claimed. Wait (doubling, with jitter), then hand the message back to
        # the broker rather than ack it, so the job is neither lost nor spun on.
        settings = runtime.settings
        runtime.db_failures += 1
        delay = min(settings.db_retry_max_s, settings.db_retry_s * 2 ** (runtime.db_failures - 1))
        delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
        log.warning("database unavailable (%s); job %s goes back to the broker in %.1f s", type(exc).__name__,
                    job_id, delay)
        time.sleep(delay)
        raise Reject(reason="database unavailable", requeue=True) from None
    runtime.db_failures = 0
    observability.attempt_ended(outcome)
    return outcome
