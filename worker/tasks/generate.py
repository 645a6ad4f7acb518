"""The generation task: one job id in, the logic in ``worker.generation``."""

from __future__ import annotations

import os

from celery import Task

from shared import tasks
from worker.celery_app import app
from worker.runtime import get_runtime


@app.task(name=tasks.GENERATE, ignore_result=True, bind=True)
def generate(self: Task, job_id: str) -> str:
    from worker.generation import run_generation  # torch is imported here, not in CPU-only workers

    runtime = get_runtime()
    runtime.worker_name = f"{self.request.hostname}:{os.getpid()}"
    return run_generation(job_id, runtime)
