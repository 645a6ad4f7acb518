"""Maintenance logic run by beat through the maintenance tasks: the outbox relay and the lease sweep."""

from __future__ import annotations

import logging

from shared import jobs
from shared.db import Database
from shared.queue import Publisher
from shared.settings import Settings

log = logging.getLogger(__name__)


def sweep_leases(db: Database, settings: Settings) -> tuple[list[str], list[str]]:
    """Running jobs whose worker stopped renewing the lease go back to the queue (or fail after the last try)."""
    with db.begin() as session:
        requeued, failed = jobs.expire_leases(session, settings.max_attempts)
    if requeued or failed:
        log.warning("lease sweep: %d job(s) re-queued, %d failed worker_lost", len(requeued), len(failed))
    return requeued, failed


def relay_unpublished(db: Database, settings: Settings, publisher: Publisher, batch: int = 500) -> int:
    """Publish queued jobs that have no publish on record (broker down at submit, re-queued jobs)."""
    with db.begin() as session:
        pending = jobs.unpublished(session, settings.relay_delay_s, limit=batch)
    published = 0
    for job_id, queue in pending:
        if not publisher.publish(job_id, queue):
            break  # the broker is still down: the next round tries again
        with db.begin() as session:
            jobs.mark_published(session, job_id)
        published += 1
    if published:
        log.info("relay: published %d job(s)", published)
    return published
