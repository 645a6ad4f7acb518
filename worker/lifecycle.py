"""Process lifecycle: load the pipeline in the pool child, before it consumes (never in the parent: CUDA does not
survive fork, and a parent holding a pipeline would copy gigabytes into every child)."""

from __future__ import annotations

import logging
import os
import signal
from types import FrameType
from typing import Any

from billiard.common import TERM_SIGNAL
from celery import signals
from celery.worker.control import inspect_command

from shared.tasks import GPU_QUEUES
from worker import node
from worker.runtime import Runtime, SetupFailed, get_runtime

log = logging.getLogger(__name__)

@signals.worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    runtime = get_runtime()
    if not node.consumes(GPU_QUEUES):
        return
    try:
        runtime.engine()
    except SetupFailed:
        pass  # recorded as runtime.setup_error; jobs fail with setup_failed instead of the child crash-looping


@inspect_command()
def illustrations_device(state: Any, **_: Any) -> dict[str, Any]:
    """``celery inspect illustrations_device``: the GPU this worker process is pinned to, and its name."""
    return {"hostname": state.hostname, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "pid": os.getpid()}
def watch_for_stop(runtime: Runtime) -> None:
    """In a pool child, turn the signal Celery sends to cancel a task at shutdown into ``runtime.stopping``.

    Celery's soft shutdown (SIGTERM remapped to SIGQUIT, ``worker_soft_shutdown_timeout``) lets the running job
    go on for the grace period, then cancels it by sending ``TERM_SIGNAL`` to the pool child, which would kill it
    mid-step and leave the job to the lease sweep. Instead the run stops at its next step and gives the job back
    at once (``running -> queued``, fenced). A child with no job exits as billiard's own handler makes it.
    Installed from inside the first task, after billiard set its handlers up (``reset_signals`` runs after
    ``worker_process_init``). Nothing to do in the main process (solo pool): Celery handles its signals there.
    """
    if runtime.stop_handler_installed or os.getpid() == _main_pid:
        return
    previous = signal.getsignal(TERM_SIGNAL)

    def on_stop(signum: int, frame: FrameType | None) -> None:
        if runtime.busy:
            runtime.stopping.set()
            return
        if callable(previous):
            previous(signum, frame)
        else:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    signal.signal(TERM_SIGNAL, on_stop)
    runtime.stop_handler_installed = True


_main_pid = os.getpid()
