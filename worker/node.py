"""This worker node: its name and the queues it consumes, as Celery hands them over once the worker is set up.

``celeryd_after_setup`` is sent in the main process with the worker itself, after ``--queues`` (and the queues an
operator paused, ``worker.ops_control``) are applied and before the pool forks, so the pool children know the node
too. Modules that connect worker signals read the app from here (or from the signal's sender) instead of importing
``worker.celery_app``, which imports them: the arrows go one way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from celery import signals

name: str | None = None  # this worker's node name (gpu0@host), known in the main process and its children
_worker: Any = None  # the WorkController of this worker's main process


@signals.celeryd_after_setup.connect
def _remember(sender: str, instance: Any, **_: Any) -> None:
    global name, _worker
    name, _worker = sender, instance


def consumes(queues: Iterable[str]) -> bool:
    """Whether this worker consumes any of ``queues`` now (False outside a started worker)."""
    if _worker is None:
        return False
    declared = _worker.app.amqp.queues
    consumed = set(declared.consume_from or declared)
    return bool(consumed & set(queues))


def pool_processes() -> list[int]:
    """The pids of this worker's pool children (none before the pool started, or for a pool without children)."""
    pool = getattr(_worker, "pool", None)
    try:
        return list(pool.info.get("processes", [])) if pool is not None else []
    except Exception:  # a pool that is not started (or not prefork) has no children to tell
        return []
