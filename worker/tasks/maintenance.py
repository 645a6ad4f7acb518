"""Maintenance tasks scheduled by beat (any CPU worker on the maintenance queue runs them).

They ack on receipt (``acks_late=False``, unlike generation): beat sends each one again every interval and each is
idempotent, so a late ack buys nothing, while a worker holding an unacked message when the broker connection drops
can crash in kombu 5.7 (``Channel.close`` restores unacked messages after it dropped its connection pool:
``AttributeError: 'NoneType' object has no attribute 'hostname'``), which would stop the relay until restarted.
"""

from __future__ import annotations

from shared import tasks
from shared.deletion.run import relay_deletions, run_deletion
from shared.queue import Publisher
from worker import maintenance, observability
from worker.celery_app import app
from worker.runtime import get_runtime


@app.task(name=tasks.SWEEP, ignore_result=True, acks_late=False)
def sweep() -> dict[str, int]:
    runtime = get_runtime()
    result = maintenance.sweep(runtime.db, runtime.settings)
    return {"requeued": len(result.requeued) + len(result.trainings_requeued),
            "failed": len(result.failed) + len(result.trainings_failed), "deadline": len(result.deadline)}


@app.task(name=tasks.RELAY, ignore_result=True, acks_late=False)
def relay() -> int:
    runtime = get_runtime()
    publisher = Publisher(app)
    published = maintenance.relay_unpublished(runtime.db, runtime.settings, publisher)
    published += maintenance.relay_trainings(runtime.db, runtime.settings, publisher)
    published += relay_deletions(runtime.db, publisher)
    observability.RELAY_RUNS.inc()
    observability.RELAY_PUBLISHED.inc(published)
    return published


@app.task(name=tasks.UPKEEP, ignore_result=True, acks_late=False)
def upkeep() -> int:
    runtime = get_runtime()
    return maintenance.upkeep(runtime.db, runtime.settings)


@app.task(name=tasks.DELETE_USER, ignore_result=True)
def delete_user(deletion_id: str) -> str:
    runtime = get_runtime()
    return run_deletion(runtime.db, runtime.storage, runtime.settings, deletion_id)
