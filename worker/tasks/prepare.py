"""The preparation task (CPU worker, ``illustrations.prepare`` queue): a job id in, logic in ``worker.preparation``."""

from __future__ import annotations

from shared import tasks
from shared.fetch import Fetcher
from shared.queue import Publisher
from worker.celery_app import app
from worker.preparation import prepare_job
from worker.runtime import get_runtime


@app.task(name=tasks.PREPARE, ignore_result=True)
def prepare(job_id: str) -> str:
    runtime = get_runtime()
    fetcher = Fetcher.from_settings(runtime.settings)
    return prepare_job(runtime.db, runtime.storage, fetcher, Publisher(app), job_id)
