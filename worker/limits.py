"""What ends an attempt early, answered the same way for generations and trainings: the GPU running out of memory,
and Celery's hard time limit.

The soft time limit needs nothing here: Celery raises ``SoftTimeLimitExceeded`` inside the running code, where each
kind's run fails its row ``time_limit``. At the hard limit Celery kills the pool child and calls the task's
``on_failure`` in the worker's main process, which fails the row (``HardTimeLimitTask``); without that it would
stay running until its lease expired and then run (or resume) again. No torch at import: the main process and the
CPU workers import this module.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from billiard.einfo import ExceptionInfo
from billiard.exceptions import TimeLimitExceeded
from celery import Task
from sqlalchemy.orm import Session

from shared import jobs, training
from shared.errors import ErrorCode
from shared.settings import Settings
from worker import node
from worker.runtime import Runtime, get_runtime

log = logging.getLogger(__name__)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch's out-of-memory error (``torch.cuda.OutOfMemoryError``, the same class as
    ``torch.OutOfMemoryError``): the allocation of a too-large size or batch failed, the process is fine."""
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def free_gpu_memory() -> None:
    """After an out-of-memory error, once the failed call's frames are gone: hand its cached blocks back."""
    import torch

    gc.collect()  # the failed call's tensors are garbage once its frames are gone
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class HardTimeLimit:
    """How one kind of task fails its row when its pool child was killed at the hard time limit."""

    row: str  # how the log names the row: "job", "training"
    work: str  # how the error message names the work: "generation", "training"
    limit_s: Callable[[Settings], float]
    failed_on_worker: Callable[[Session, str, str, ErrorCode, str], bool]

    def fail(self, runtime: Runtime, job_id: str, hostname: str) -> bool:
        """Fail ``job_id`` ``time_limit``, fenced by the worker name, which starts with this node's hostname: only
        an attempt of this worker is failed, never a later one elsewhere. Whether it was failed."""
        message = f"the {self.work} was stopped at the hard time limit of {self.limit_s(runtime.settings)} s"
        with runtime.db.begin() as session:
            return self.failed_on_worker(session, job_id, f"{hostname}:", ErrorCode.TIME_LIMIT, message)


GENERATION = HardTimeLimit("job", "generation", lambda settings: settings.task_time_limit_s, jobs.failed_on_worker)
TRAINING = HardTimeLimit("training", "training", lambda settings: settings.training_time_limit_s,
                         training.failed_on_worker)


class HardTimeLimitTask(Task):
    """A task whose row (the first argument is its id) fails ``time_limit`` when Celery kills it at the hard limit."""

    hard_time_limit: ClassVar[HardTimeLimit]

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: Any, einfo: ExceptionInfo) -> None:
        """Called by Celery in the worker's main process (``Request.on_timeout``) after it killed the pool child;
        the node name comes from ``celeryd_after_setup``."""
        if not isinstance(exc, TimeLimitExceeded) or not args or node.name is None:
            return
        limit = self.hard_time_limit
        if limit.fail(get_runtime(), str(args[0]), node.name):
            log.warning("%s %s failed: time_limit (hard)", limit.row, args[0])
