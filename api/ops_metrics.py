"""Metrics read from PostgreSQL (the source of truth) at scrape time, by the API's ``/metrics``.

Jobs by state and queue, queue depth and the age of the oldest queued job per queue, what waits for the relay
(unpublished jobs and the oldest one's age: the relay's lag), paused queues and clients, the webhook backlog. They
are the same in every API process, so they are not multiprocess metrics: each scrape reads them once (a few
``GROUP BY`` queries over indexed columns). A database that does not answer gives ``illustrations_database_up 0``
and nothing else from this collector, never a failed scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Final

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from shared.db import Database, seconds_since, utcnow
from shared.models import Client, Job, PausedQueue
from shared.states import JobStatus
from shared.webhooks import events as webhook_events

log = logging.getLogger(__name__)

# Every metric name this collector exports (the infra tests check alert and dashboard expressions against them).
NAMES: Final = (
    "illustrations_database_up",
    "illustrations_jobs",
    "illustrations_queue_depth",
    "illustrations_queue_oldest_age_seconds",
    "illustrations_unpublished_jobs",
    "illustrations_unpublished_oldest_age_seconds",
    "illustrations_paused_queues",
    "illustrations_paused_clients",
    "illustrations_webhook_backlog",
)


def webhook_backlog(session: Session) -> int:
    """Webhook events due now and not delivered (a slow or dead receiver, or no CPU worker on the webhooks queue)."""
    return webhook_events.backlog(session)


class DatabaseCollector:
    """A prometheus_client collector over the jobs table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> list[Metric]:
        return []  # names are only known from collect(); registering needs no description

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("illustrations_database_up", "1 when the database answered this scrape.")
        try:
            with self.db.begin() as session:
                families = list(self._families(session))
        except Exception as exc:  # a scrape must not fail because the database is down
            log.warning("metrics: database unavailable (%s)", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _families(self, session: Session) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("illustrations_jobs", "Jobs by state and queue (all time).",
                                 labels=["state", "queue"])
        for status, queue, count in session.execute(
            select(Job.status, Job.queue, func.count()).group_by(Job.status, Job.queue)
        ):
            jobs.add_metric([status, queue], count)
        yield jobs

        depth = GaugeMetricFamily("illustrations_queue_depth", "Queued jobs per queue.", labels=["queue"])
        oldest = GaugeMetricFamily("illustrations_queue_oldest_age_seconds",
                                   "Age of the oldest queued job per queue.", labels=["queue"])
        age = seconds_since(func.min(Job.created_at))
        for queue, count, seconds in session.execute(
            select(Job.queue, func.count(), age).where(Job.status == JobStatus.QUEUED.value).group_by(Job.queue)
        ):
            depth.add_metric([queue], count)
            oldest.add_metric([queue], max(0.0, float(seconds or 0.0)))
        yield depth
        yield oldest

        paused_clients = select(Client.id).where(Client.paused_at.is_not(None))
        count, seconds = session.execute(
            select(func.count(), seconds_since(func.min(Job.created_at))).where(
                Job.status == JobStatus.QUEUED.value, Job.published_at.is_(None),
                or_(Job.not_before.is_(None), Job.not_before <= utcnow()),
                Job.client_id.not_in(paused_clients), Job.follows_job_id.is_(None),
            )
        ).one()
        unpublished = GaugeMetricFamily(
            "illustrations_unpublished_jobs", "Queued jobs due for a publish (broker down, given back, over a "
            "client's publish cap); paused clients' jobs are not counted.")
        unpublished.add_metric([], count)
        yield unpublished
        lag = GaugeMetricFamily("illustrations_unpublished_oldest_age_seconds",
                                "Age of the oldest job waiting for the relay (0 when none).")
        lag.add_metric([], max(0.0, float(seconds or 0.0)))
        yield lag

        queues = GaugeMetricFamily("illustrations_paused_queues", "1 for each queue paused by an operator.",
                                   labels=["queue"])
        for (name,) in session.execute(select(PausedQueue.name)):
            queues.add_metric([name], 1)
        yield queues
        clients = GaugeMetricFamily("illustrations_paused_clients", "Clients paused by an operator.")
        clients.add_metric([], session.execute(select(func.count()).select_from(paused_clients.subquery()))
                           .scalar_one())
        yield clients

        backlog = GaugeMetricFamily("illustrations_webhook_backlog", "Webhook events due and not yet delivered.")
        backlog.add_metric([], webhook_backlog(session))
        yield backlog
