"""The workers' Celery app. Its settings are ``shared.queue.celery_config`` (one module, shared with the API).

The configuration is added lazily, so importing this module reads no settings; ``illustrations worker`` sets the
environment first, then Celery reads the settings once when the worker starts.

The arrows go one way: the task modules (``include``) import this app; this module imports what sets a worker
process up, whose import connects it (Celery signals and remote-control commands, the result cache's on-finished
hook), and none of those imports the app back: a signal hands them the worker or its consumer (``worker.node``).
"""

from __future__ import annotations

from celery import Celery

import shared.cache  # noqa: F401  (the result cache's on-finished hook: entries, followers)
import worker.lifecycle  # the pipeline loaded in the pool child; illustrations_device
import worker.observability  # metrics, log context
import worker.ops_control  # pause/resume of queues
import worker.training.stop  # noqa: F401  (a training worker's SIGTERM)
from shared.queue import celery_config
from shared.settings import get_settings

app = Celery("illustrations", include=["worker.tasks.generate", "worker.tasks.maintenance", "worker.tasks.prepare",
                                       "worker.tasks.prepare_style", "worker.tasks.train",
                                       "worker.tasks.webhooks"])
app.add_defaults(lambda: celery_config(get_settings()))
