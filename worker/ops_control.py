"""Remote control of queues for ``illustrations ops pause|resume QUEUE``, and paused queues honoured at start.

A pause is a row in ``paused_queues`` (so it outlives the workers that see it) and a broadcast: every worker that
consumes the queue stops consuming it (messages wait in the broker, jobs stay ``queued``); a worker that starts
while the queue is paused leaves it out before it consumes anything. A resume deletes the row and tells each worker
to consume the queue again, but only a worker that was started with it (``--queues``): a maintenance worker never
starts taking generation jobs because someone resumed their queue.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import signals
from celery.worker.control import control_command
from sqlalchemy import select

from shared.db import Database
from shared.models import PausedQueue
from shared.settings import get_settings
from worker import observability

log = logging.getLogger(__name__)

# The queues this worker was started with (its --queues, in priority order), known in the main process.
started_with: list[str] = []


def paused_queues(db: Database) -> set[str]:
    with db.begin() as session:
        return set(session.execute(select(PausedQueue.name)).scalars())


@signals.celeryd_after_setup.connect
def _honour_pauses(sender: str, instance: Any, **_: Any) -> None:
    """Before the consumer starts: remember our queues, and leave out those paused now."""
    queues = instance.app.amqp.queues
    started_with[:] = list(queues.consume_from)
    db = Database(get_settings())
    try:
        paused = paused_queues(db) & set(started_with)
    except Exception as exc:  # no database now: consume everything (a pause is re-broadcast by the next command)
        log.warning("could not read paused queues (%s); consuming every queue", type(exc).__name__)
        return
    finally:
        db.engine.dispose()
    if paused:
        queues.deselect(sorted(paused))
        for queue in paused:
            observability.consuming(queue, False)
        log.warning("queues paused by an operator, not consumed: %s", ", ".join(sorted(paused)))


@control_command(args=[("queue", str)], signature="<queue>")
def illustrations_pause_queue(state: Any, queue: str, **_: Any) -> dict[str, str]:
    """Stop consuming ``queue`` (if this worker consumes it); a running job finishes."""
    if queue not in started_with:
        return {"ok": f"{queue} is not consumed here"}
    state.consumer.call_soon(state.consumer.cancel_task_queue, queue)
    observability.consuming(queue, False)
    return {"ok": f"paused {queue}"}


@control_command(args=[("queue", str)], signature="<queue>")
def illustrations_resume_queue(state: Any, queue: str, **_: Any) -> dict[str, str]:
    """Consume ``queue`` again, if this worker was started with it."""
    if queue not in started_with:
        return {"ok": f"{queue} is not consumed here"}
    state.consumer.call_soon(_consume_in_order, state.consumer, queue)
    observability.consuming(queue, True)
    return {"ok": f"resumed {queue}"}


def _consume_in_order(consumer: Any, queue: str) -> None:
    """Add ``queue`` back in its place: on Redis the order of a worker's queues is their priority (interactive
    before batch), and a queue added last would come last. So the queues after it are re-added behind it."""
    current = [q.name for q in consumer.task_consumer.queues] if consumer.task_consumer else []
    wanted = [name for name in started_with if name in current or name == queue]
    later = wanted[wanted.index(queue) + 1:]
    for name in later:
        if name in current:
            consumer.cancel_task_queue(name)
    for name in [queue, *later]:
        consumer.add_task_queue(name)
