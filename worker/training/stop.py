"""A training worker asked to stop (SIGTERM) checkpoints its training and gives it back to the queue.

Celery's warm shutdown (SIGTERM to the worker's main process, which is what Kubernetes and compose send) stops
consuming and waits for the running task without telling it; a training would keep the pod for hours past its grace
period. So, in a worker that consumes the training queue:

- the main process forwards the signal to its pool children (``worker_shutting_down``, sent by Celery's own
  SIGTERM/SIGQUIT handlers) and sets the flag itself (for a ``solo`` or ``threads`` pool, where the task runs there);
- a pool child turns SIGTERM into that flag while it runs a training (``sigterm_stops_training``, around the
  training task). Only then: billiard installs its own SIGTERM handler (exit at once) after ``worker_process_init``,
  and an idle child should keep dying that way;
- the training loop reads the flag after each step: it writes a checkpoint, gives the version back to the queue
  (fenced by its attempt, not counted as a lost attempt), publishes it and returns, so the warm shutdown ends within
  the grace period and the next worker resumes from that step.

Nothing here depends on Celery's soft-shutdown settings; if those cancel the task before it returned, the lease
runs out and the training resumes from its last periodic checkpoint instead.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from billiard.process import current_process
from celery import signals

from shared.tasks import QUEUE_TRAINING
from worker import node

log = logging.getLogger(__name__)

_stop = threading.Event()


def stop_requested() -> bool:
    """Whether this process was asked to stop (read by the training loop after each step)."""
    return _stop.is_set()


def request_stop() -> None:
    """What SIGTERM does in a training worker's processes."""
    _stop.set()


def reset() -> None:
    """Forget a stop request (a test that asked for one goes on with the next training)."""
    _stop.clear()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _stop.set()


@contextmanager
def sigterm_stops_training() -> Iterator[None]:
    """In a prefork pool child: while the block runs, SIGTERM sets the stop flag instead of ending the process.

    Elsewhere (the main process of a ``solo`` or ``threads`` pool, or a test) it changes nothing: Celery's handler
    stays in place there and ``worker_shutting_down`` sets the flag.
    """
    in_pool_child = (current_process().name != "MainProcess"
                     and threading.current_thread() is threading.main_thread())
    if not in_pool_child:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@signals.worker_shutting_down.connect
def _forward_to_children(sig: str, how: str, **_: Any) -> None:
    """In the main process, from Celery's signal handler: tell every pool child (and this process) to stop."""
    if not node.consumes([QUEUE_TRAINING]):
        return
    _stop.set()
    for pid in node.pool_processes():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
