"""The workers' Celery app. Its settings are ``shared.queue.celery_config`` (one module, shared with the API).

The configuration is added lazily, so importing this module reads no settings; ``illustrations worker`` sets the
environment first, then Celery reads the settings once when the worker starts.
"""

from __future__ import annotations

from celery import Celery

from shared.queue import celery_config
from shared.settings import get_settings

app = Celery("illustrations", include=["worker.tasks.generate", "worker.tasks.maintenance", "worker.tasks.prepare",
                                       "worker.tasks.prepare_style", "worker.tasks.train",
                                       "worker.tasks.webhooks"])
app.add_defaults(lambda: celery_config(get_settings()))

# Signals that set up the process (pipeline loaded in the pool child; a training worker's SIGTERM handling).
import shared.cache  # noqa: E402,F401  (the result cache's on-finished hook: entries, followers)
import worker.lifecycle  # noqa: E402
import worker.observability  # noqa: E402  (metrics, log context)
import worker.ops_control  # noqa: E402  (pause/resume of queues)
import worker.training.stop  # noqa: E402,F401
