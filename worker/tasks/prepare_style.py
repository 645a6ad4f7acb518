"""The preparation task of a training (CPU worker, ``illustrations.prepare`` queue): logic in
``worker.style_preparation``."""

from __future__ import annotations

from shared import tasks
from shared.fetch import Fetcher
from shared.queue import Publisher
from worker.celery_app import app
from worker.runtime import get_runtime
from worker.style_preparation import prepare_style as prepare


@app.task(name=tasks.PREPARE_STYLE, ignore_result=True)
def prepare_style(job_id: str) -> str:
    runtime = get_runtime()
    return prepare(runtime.db, runtime.storage, Fetcher.from_settings(runtime.settings), Publisher(app), job_id)
