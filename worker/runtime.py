"""What a worker process holds: settings, database, storage and (in generation workers) the warm engine.

Setup once, run many: the engine is loaded in the pool child before it consumes (``worker.lifecycle``), or on first
use in pools without children. A failed load is kept as a health state (``setup_error``) and every job it would run
fails with ``setup_failed`` naming the fix, instead of a crash loop.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from shared.db import Database
from shared.settings import Settings, get_settings
from shared.storage import Storage, open_storage

if TYPE_CHECKING:
    from worker.pipeline.engine import Engine

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.db = Database(settings)
        self.storage: Storage = open_storage(settings)
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"  # the task sets Celery's node name
        self.setup_error: str | None = None
        # Set when the worker is stopping and the running job must be given back (worker.lifecycle).
        self.stopping = threading.Event()
        self.busy = False  # a job is running in this process
        self.stop_handler_installed = False
        # Consecutive claims that found the database down (the task shell backs off on it).
        self.db_failures = 0
        self.load_seconds: float | None = None
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def engine(self) -> Engine:
        """The warm engine, loading it on first use; raises ``SetupFailed`` if it cannot be loaded."""
        with self._lock:
            if self._engine is None and self.setup_error is None:
                self._load()
            if self._engine is None:
                raise SetupFailed(self.setup_error or "the model is not loaded")
            return self._engine

    def _load(self) -> None:
        from worker.pipeline.engine import Engine
        from worker.pipeline.profiles import ModelsMissing, resolve_profile

        started = time.monotonic()
        profile = resolve_profile(self.settings.model_profile, self.settings.effective_model_dir)
        try:
            self._engine = Engine.load(profile, device=self.settings.device, num_threads=self.settings.torch_threads)
        except ModelsMissing as exc:
            self.setup_error = str(exc)
        except Exception as exc:  # any load failure is a health state, not a crash loop
            log.exception("pipeline setup failed")
            self.setup_error = f"the model could not be loaded ({type(exc).__name__}); see the worker log"
        self.load_seconds = time.monotonic() - started
        if self.setup_error:
            log.error("worker setup failed: %s", self.setup_error)
        else:
            log.info("pipeline %s loaded in %.2f s", profile.name, self.load_seconds)


class SetupFailed(RuntimeError):
    pass


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid():
            _runtime = Runtime(get_settings())
        return _runtime
