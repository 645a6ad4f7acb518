"""Maintenance tasks scheduled by beat (any CPU worker on the maintenance queue runs them)."""

from __future__ import annotations

from shared import tasks
from shared.queue import Publisher
from worker import maintenance
from worker.celery_app import app
from worker.runtime import get_runtime


@app.task(name=tasks.SWEEP, ignore_result=True)
def sweep() -> dict[str, int]:
    runtime = get_runtime()
    result = maintenance.sweep(runtime.db, runtime.settings)
    return {"requeued": len(result.requeued), "failed": len(result.failed), "deadline": len(result.deadline)}


@app.task(name=tasks.RELAY, ignore_result=True)
def relay() -> int:
    runtime = get_runtime()
    return maintenance.relay_unpublished(runtime.db, runtime.settings, Publisher(app))


@app.task(name=tasks.UPKEEP, ignore_result=True)
def upkeep() -> int:
    runtime = get_runtime()
    return maintenance.upkeep(runtime.db, runtime.settings)
