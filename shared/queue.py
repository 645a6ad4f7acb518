"""The Celery app's settings, in one module, and the publish used by the API and the relay.

Both sides build their Celery app here, so a producer and a consumer can never disagree on serializer, queues or
transport options. The API enqueues by task name (it never imports worker code, nor torch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery

from shared import tasks
from shared.settings import Settings

log = logging.getLogger(__name__)

# The key in the broker's Redis db that tells whether Redis still holds what was published (see broker_lost_data).
BROKER_EPOCH_KEY = "illustrations:broker-epoch"


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.effective_broker_url,
        "broker_connection_retry_on_startup": True,
        # A worker whose broker went away waits for it as long as it takes (Celery's default gives up after 100
        # tries and stops the worker): the jobs wait in PostgreSQL meanwhile.
        "broker_connection_max_retries": None,
        "broker_transport_options": {
            # Redis re-delivers a message not acked within this time; it must exceed the longest job, else a long
            # generation runs twice (the default is 1 hour).
            "visibility_timeout": settings.visibility_timeout_s,
            # Short socket timeouts: a publish to a dead Redis must fail fast, not hang a request (celery #4296).
            "socket_timeout": settings.broker_socket_timeout_s,
            "socket_connect_timeout": settings.publish_timeout_s,
            # With several queues, Redis workers poll them in the order given (-Q interactive,batch): interactive
            # work first.
            "queue_order_strategy": "priority",
        },
        # Only JSON: a message is {"args": [job_id]}. No pickle anywhere.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        # PostgreSQL is the source of truth; Celery results are never read.
        "task_ignore_result": True,
        "result_backend": None,
        # Ack after the task ran, so a worker that dies mid-job gets its message re-delivered ...
        "task_acks_late": True,
        # ... and also when the pool child is killed (acks_late alone still acks then).
        "task_reject_on_worker_lost": True,
        # A GPU worker holds one message at a time; a second one would wait behind a long job.
        "worker_prefetch_multiplier": settings.worker_prefetch_multiplier,
        # ... and with acks_late Celery still reserves one more on Redis: a worker killed then leaves that message
        # unacked until the visibility timeout (hours). Celery >= 5.6 fetches only when a pool process is free.
        "worker_disable_prefetch": settings.effective_broker_url.startswith(("redis", "rediss")),
        # A running job keeps going when the broker connection drops: its lease decides what happens to a
        # re-delivery, so cancelling it would only waste the GPU time already spent.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_default_queue": tasks.QUEUE_INTERACTIVE,
        "task_create_missing_queues": True,
        "task_soft_time_limit": settings.task_soft_time_limit_s,
        "task_time_limit": settings.task_time_limit_s,
        # SIGTERM (remapped to SIGQUIT by `illustrations worker`, see cli.serve) starts Celery's soft
        # shutdown: the running job may finish within this grace period, then it is cancelled and gives its job
        # back (worker.lifecycle); without it a warm shutdown waits for the job however long it takes.
        "worker_soft_shutdown_timeout": settings.worker_soft_shutdown_s,
        # A style training runs for hours, a generation for minutes: the training task has its own limits.
        "task_annotations": {tasks.TRAIN: {"soft_time_limit": settings.training_soft_time_limit_s,
                                           "time_limit": settings.training_time_limit_s}},
        # Loading a pipeline in the pool child takes seconds; Celery's default (4 s) would kill the child.
        "worker_proc_alive_timeout": settings.worker_proc_alive_timeout_s,
        # Events feed Flower's task list; payloads are job ids only, so nothing personal shows there.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "relay": {"task": tasks.RELAY, "schedule": settings.relay_interval_s,
                      "options": {"queue": tasks.QUEUE_MAINTENANCE, "expires": settings.relay_interval_s}},
            "sweep": {"task": tasks.SWEEP, "schedule": settings.relay_interval_s,
                      "options": {"queue": tasks.QUEUE_MAINTENANCE, "expires": settings.relay_interval_s}},
            "webhooks": {"task": tasks.DISPATCH_WEBHOOKS, "schedule": settings.webhook_dispatch_interval_s,
                         "options": {"queue": tasks.QUEUE_MAINTENANCE,
                                     "expires": settings.webhook_dispatch_interval_s}},
            "upkeep": {"task": tasks.UPKEEP, "schedule": settings.maintenance_interval_s,
                       "options": {"queue": tasks.QUEUE_MAINTENANCE, "expires": settings.maintenance_interval_s}},
        },
        "beat_schedule_filename": str(settings.var_path / "celerybeat-schedule"),
    }


def make_celery(settings: Settings, name: str = "illustrations", *, producer: bool = False) -> Celery:
    """The Celery app; ``producer=True`` for processes that only publish (the API, the relay's callers)."""
    app = Celery(name)
    config = celery_config(settings)
    if producer:
        # kombu retries a failed connect for broker_connection_timeout before a publish with retry=False gives up:
        # a submit must not wait that long for a dead broker; the outbox relay publishes later.
        config["broker_transport_options"] = {
            **config["broker_transport_options"],
            "max_retries": 0,
            "connect_retries_timeout": settings.publish_timeout_s,
        }
    app.conf.update(config)
    return app


class Publisher:
    """Publishes job ids; a failure is logged and left to the outbox relay (the row is already committed)."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def publish(self, job_id: str, queue: str) -> bool:
        """Publish a job to the queue its row names (the task follows from the queue: prepare or generate)."""
        return self.send(tasks.TASK_BY_QUEUE.get(queue, tasks.GENERATE), job_id, queue)

    def send(self, task: str, object_id: str, queue: str) -> bool:
        """Send ``task`` with one id; False (logged) when the broker is unreachable: the relay sends it later."""
        try:
            self.app.send_task(task, args=[object_id], queue=queue, retry=False)
        except Exception as exc:  # any broker fault: the relay publishes it later
            log.warning("publish of %s %s to %s failed (%s); the relay will retry", task, object_id, queue,
                        type(exc).__name__)
            return False
        return True

    def broker_lost_data(self, on_lost: Callable[[], None]) -> bool | None:
        """Whether the broker lost its data since the last look; ``None`` when it cannot be reached.

        Redis keeps a marker holding its ``run_id``. A missing marker (a new or emptied server) or another run_id
        (a restart, which may have dropped the last writes) means messages may be gone: ``on_lost`` runs (it
        makes every queued job unpublished again) and only then is the marker set, so a crash in between repeats
        the work instead of skipping it. Other brokers keep durable queues: ``False``.
        """
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=0)
                client = getattr(connection.default_channel, "client", None)
                if client is None or not hasattr(client, "info"):
                    return False
                run_id = str(client.info("server")["run_id"])
                marker = client.get(BROKER_EPOCH_KEY)
                if marker is not None and marker.decode() == run_id:
                    return False
                on_lost()
                client.set(BROKER_EPOCH_KEY, run_id)
                return True
        except Exception as exc:  # any broker fault: the next round looks again
            log.warning("broker epoch check failed (%s); the next round looks again", type(exc).__name__)
            return None

    def broker_ok(self) -> bool:
        """Whether the broker answers now (one connection attempt, short timeouts)."""
        try:
            with self.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=0)
                return True
        except Exception:
            return False
