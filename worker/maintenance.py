"""Maintenance logic run by beat through the maintenance tasks: the outbox relays, the sweep and upkeep.

No torch here: the CPU worker that runs maintenance imports this.

- ``relay_unpublished``: publishes queued jobs that have no publish on record (broker down at submit, jobs given
  back, jobs held back by the per-client cap), all queued jobs when the broker lost its data, and jobs whose
  publish is so old that their message may have died with a worker (``republish_after_s``).
- ``relay_trainings``: the same for queued trainings (broker down at submit, given back, re-queued).
- ``sweep``: expired leases of jobs and trainings back to the queue (trainings resume from their checkpoint), or
  ``failed``/``worker_lost`` once ``max_attempts`` attempts were lost; queued jobs past ``cancel_after`` to
  ``canceled``/``deadline``. Followers (in-flight dedupe) whose leader finished or vanished without taking them
  along are settled.
- ``upkeep``: forgets idempotency keys and result cache entries older than their retention.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from shared import cache, idempotency, jobs, tasks, training
from shared.db import Database
from shared.queue import Publisher
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Sweep:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    deadline: list[str] = field(default_factory=list)
    followers: list[str] = field(default_factory=list)
    trainings_requeued: list[str] = field(default_factory=list)
    trainings_failed: list[str] = field(default_factory=list)


def sweep(db: Database, settings: Settings) -> Sweep:
    """Expired leases and passed deadlines, each one fenced transition per row."""
    with db.begin() as session:
        requeued, failed = jobs.expire_leases(session, settings.max_attempts)
        deadline = jobs.expire_deadlines(session)
        followers = cache.release_orphans(session)
    with db.begin() as session:
        trainings_requeued, trainings_failed = training.expire_leases(session, settings.max_attempts)
    for kind, back, lost in (("job", requeued, failed), ("training", trainings_requeued, trainings_failed)):
        if back or lost:
            log.warning("lease sweep: %d %s(s) re-queued, %d failed worker_lost", len(back), kind, len(lost))
    if deadline:
        log.info("deadline sweep: %d queued job(s) canceled (cancel_after passed)", len(deadline))
    if followers:
        log.warning("follower sweep: %d follower(s) of a finished or missing job settled", len(followers))
    return Sweep(requeued, failed, deadline, followers, trainings_requeued, trainings_failed)


def relay_unpublished(db: Database, settings: Settings, publisher: Publisher, batch: int = 500) -> int:
    """Publish what is due (see ``jobs.unpublished``); first, if the broker lost its data, forget every publish."""
    if publisher.broker_lost_data(lambda: _forget_publishes(db)) is None:
        return 0  # the broker is down: the next round tries again
    with db.begin() as session:
        pending = jobs.unpublished(session, settings.relay_delay_s, limit=batch, cap=settings.client_publish_cap)
        pending += jobs.stale(session, settings.republish_after_s, limit=batch)
    published: list[str] = []
    for job_id, queue in pending:
        if not publisher.publish(job_id, queue):
            break  # the broker is down again: what was published is marked below, the rest waits
        published.append(job_id)
    with db.begin() as session:
        jobs.mark_all_published(session, published)
    if published:
        log.info("relay: published %d job(s)", len(published))
    return len(published)


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


def _forget_publishes(db: Database) -> None:
    with db.begin() as session:
        count = jobs.forget_publishes(session)
    log.warning("the broker lost its data (new server or emptied): %d queued job(s) will be published again", count)


def upkeep(db: Database, settings: Settings) -> int:
    """Slow upkeep: forget idempotency keys and result cache entries past their retention."""
    with db.begin() as session:
        forgotten = idempotency.purge(session, settings.idempotency_ttl_s)
        expired = cache.expire(session, settings.cache_retention_s)
    if forgotten:
        log.info("upkeep: forgot %d expired idempotency key(s)", forgotten)
    if expired:
        log.info("upkeep: forgot %d result cache entr(ies) past retention", expired)
    return forgotten
