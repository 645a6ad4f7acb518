"""The outbox relay and the lease sweep for trainings (beat runs them with the jobs' ones, on the maintenance queue).

No torch here: the CPU worker that runs maintenance imports this.
"""

from __future__ import annotations

import logging

from shared import tasks, training
from shared.db import Database
from shared.queue import Publisher
from shared.settings import Settings

log = logging.getLogger(__name__)


def sweep_training_leases(db: Database, settings: Settings) -> tuple[list[str], list[str]]:
    """Trainings whose worker stopped renewing the lease go back to the queue (they resume from their checkpoint),
    or fail ``worker_lost`` once ``max_attempts`` attempts were lost."""
    with db.begin() as session:
        requeued, failed = training.expire_leases(session, settings.max_attempts)
    if requeued or failed:
        log.warning("lease sweep: %d training(s) re-queued, %d failed worker_lost", len(requeued), len(failed))
    return requeued, failed


def relay_trainings(db: Database, settings: Settings, publisher: Publisher) -> int:
    """Publish queued trainings that have no publish on record (broker down at submit, given back, re-queued)."""
    with db.begin() as session:
        pending = training.unpublished(session, settings.relay_delay_s)
    published = 0
    for job_id, queue in pending:
        if not publisher.send(tasks.STYLE_TASK_BY_QUEUE[queue], job_id, queue):
            break  # the broker is still down: the next round tries again
        with db.begin() as session:
            training.mark_published(session, job_id)
        published += 1
    if published:
        log.info("relay: published %d training(s)", published)
    return published
