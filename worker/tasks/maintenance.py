"""Maintenance tasks scheduled by beat (any CPU worker on the maintenance queue runs them)."""

from __future__ import annotations

from shared import tasks
from shared.deletion.run import relay_deletions, run_deletion
from shared.queue import Publisher
from worker import maintenance
from worker.celery_app import app
from worker.runtime import get_runtime
from worker.training_maintenance import relay_trainings, sweep_training_leases


@app.task(name=tasks.SWEEP_LEASES, ignore_result=True)
def sweep_leases() -> dict[str, int]:
    runtime = get_runtime()
    requeued, failed = maintenance.sweep_leases(runtime.db, runtime.settings)
    trainings_requeued, trainings_failed = sweep_training_leases(runtime.db, runtime.settings)
    return {"requeued": len(requeued) + len(trainings_requeued), "failed": len(failed) + len(trainings_failed)}


@app.task(name=tasks.RELAY, ignore_result=True)
def relay() -> int:
    runtime = get_runtime()
    publisher = Publisher(app)
    published = maintenance.relay_unpublished(runtime.db, runtime.settings, publisher)
    published += relay_trainings(runtime.db, runtime.settings, publisher)
    return published + relay_deletions(runtime.db, publisher)


@app.task(name=tasks.DELETE_USER, ignore_result=True)
def delete_user(deletion_id: str) -> str:
    runtime = get_runtime()
    return run_deletion(runtime.db, runtime.storage, runtime.settings, deletion_id)
