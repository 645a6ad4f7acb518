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
from shared.settings import Settings, get_settings, parse_sizes
from shared.storage import Storage, open_storage

if TYPE_CHECKING:
    from worker.embeddings import EmbeddingCache
    from worker.pipeline.engine import Engine

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.db = Database(settings)
        self.storage: Storage = open_storage(settings)
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}"  # the task sets Celery's node name
        self.gpu = os.environ.get("CUDA_VISIBLE_DEVICES")  # pinned by `illustrations worker --gpus`
        self.setup_error: str | None = None
        # Set when the worker is stopping and the running job must be given back (worker.lifecycle).
        self.stopping = threading.Event()
        self.busy = False  # a job is running in this process
        self.stop_handler_installed = False
        # Consecutive claims that found the database down (the task shell backs off on it).
        self.db_failures = 0
        self.load_seconds: float | None = None
        self._engine: Engine | None = None
        self._embeddings: EmbeddingCache | None = None
        self._lock = threading.Lock()

    def engine(self) -> Engine:
        """The warm engine, loading it on first use; raises ``SetupFailed`` if it cannot be loaded."""
        with self._lock:
            if self._engine is None and self.setup_error is None:
                self._load()
            if self._engine is None:
                raise SetupFailed(self.setup_error or "the model is not loaded")
            return self._engine

    def loaded_engine(self) -> Engine | None:
        """The engine if it is loaded (never loads it)."""
        return self._engine

    def embeddings(self) -> EmbeddingCache:
        """The reference-embedding cache of the warm engine."""
        engine = self.engine()
        if self._embeddings is None or self._embeddings.engine is not engine:
            from worker.embeddings import EmbeddingCache

            self._embeddings = EmbeddingCache(self.storage, engine, enabled=self.settings.embedding_cache,
                                              memory_items=self.settings.embedding_memory_items)
        return self._embeddings

    def _load(self) -> None:
        from worker.pipeline.engine import Engine, EngineOptions
        from worker.pipeline.profiles import ModelsMissing, locate_profile

        started = time.monotonic()
        settings = self.settings
        profile = locate_profile(settings.model_profile, settings.effective_model_dir,
                                 explicit=settings.model_dir is not None)
        options = EngineOptions(
            lora_slots=settings.lora_slots,
            torch_compile=settings.torch_compile,
            compile_sizes=parse_sizes(settings.compile_sizes),
            lora_target_rank=settings.lora_target_rank,
            vae_tiling=settings.vae_tiling,
            vae_slicing=settings.vae_slicing,
        )
        try:
            self._engine = Engine.load(profile, device=settings.device, num_threads=settings.torch_threads,
                                       options=options)
        except ModelsMissing as exc:
            self.setup_error = str(exc)
        except Exception as exc:  # any load failure is a health state, not a crash loop
            log.exception("pipeline setup failed")
            self.setup_error = f"the model could not be loaded ({type(exc).__name__}); see the worker log"
        self.load_seconds = time.monotonic() - started
        self._report_load(profile.name)
        if self.setup_error:
            log.error("worker setup failed: %s", self.setup_error)
        elif self._engine is not None:
            log.info("pipeline %s loaded in %.2f s: revision %s on %s (CUDA_VISIBLE_DEVICES=%s)", profile.name,
                     self.load_seconds, self._engine.revision, self._engine.device_name, self.gpu)

    def _report_load(self, profile: str) -> None:
        from worker import observability

        total = None
        if self._engine is not None and self._engine.device.startswith("cuda"):
            import torch

            total = int(torch.cuda.get_device_properties(0).total_memory)
        observability.pipeline_loaded(profile, self.load_seconds or 0.0, self.setup_error is not None, total)


class SetupFailed(RuntimeError):
    pass


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid():
            if _runtime is not None:  # inherited over fork: leave the parent's connections to the parent
                _runtime.db.engine.dispose(close=False)
            _runtime = Runtime(get_settings())
        return _runtime
