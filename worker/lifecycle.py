"""Process lifecycle: load the pipeline in the pool child, before it consumes (never in the parent: CUDA does not
survive fork, and a parent holding a pipeline would copy gigabytes into every child)."""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import signals
from celery.worker.control import inspect_command

from shared.tasks import GPU_QUEUES
from worker.runtime import SetupFailed, get_runtime

log = logging.getLogger(__name__)

node_name: str | None = None  # this worker's node name (gpu0@host), known in the main process and its children


@signals.celeryd_after_setup.connect
def _remember_node_name(sender: str, **_: Any) -> None:
    global node_name
    node_name = sender


def _consumes_gpu_queue() -> bool:
    from worker.celery_app import app

    consumed = set(app.amqp.queues.consume_from or app.amqp.queues)
    return bool(consumed & set(GPU_QUEUES))


@signals.worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    runtime = get_runtime()
    if not _consumes_gpu_queue():
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
