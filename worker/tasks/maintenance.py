"""Maintenance run by beat: the outbox relay and the lease sweep (any CPU worker on the maintenance queue)."""

from __future__ import annotations

import logging

from shared import jobs, tasks
from worker.celery_app import app
from worker.runtime import get_runtime

log = logging.getLogger(__name__)


@app.task(name=tasks.SWEEP_LEASES, ignore_result=True)
def sweep_leases() -> dict[str, int]:
    """Running jobs whose worker stopped renewing the lease go back to the queue (or fail after the last try)."""
    runtime = get_runtime()
    with runtime.db.begin() as session:
        requeued, failed = jobs.expire_leases(session, runtime.settings.max_attempts)
    if requeued or failed:
        log.warning("lease sweep: %d job(s) re-queued, %d failed worker_lost", len(requeued), len(failed))
    return {"requeued": len(requeued), "failed": len(failed)}


@app.task(name=tasks.RELAY, ignore_result=True)
def relay() -> int:
    """Publish queued jobs that have no publish on record (broker down at submit, re-queued jobs)."""
    runtime = get_runtime()
    with runtime.db.begin() as session:
        pending = jobs.unpublished(session, runtime.settings.relay_delay_s)
    published = 0
    for job_id, queue in pending:
        try:
            app.send_task(tasks.GENERATE, args=[job_id], queue=queue, retry=False)
        except Exception as exc:
            log.warning("relay: broker refused job %s (%s); next round", job_id, type(exc).__name__)
            break
        with runtime.db.begin() as session:
            jobs.mark_published(session, job_id)
        published += 1
    if published:
        log.info("relay: published %d job(s)", published)
    return published
