"""What ops see of a worker: its Prometheus metrics, its exporter, and its log lines' job ids.

Metrics are written by the process that knows them (the pool child that ran a job or loaded the pipeline, the main
process for its queues) into the worker tree's multiprocess folder (``shared.prometheus``, set up by
``illustrations worker`` before this module is imported) and served by one small HTTP exporter per worker host
(``ILLUSTRATIONS_WORKER_METRICS_PORT``): Prometheus scrapes each GPU host directly. Why not push through the API:
pipeline load time, GPU memory and which queues a worker consumes exist only in the worker's processes, and an
exporter per host keeps a dead host visible (its target goes down) instead of leaving stale numbers in a database.

Logging: Celery is told not to configure logging (a ``setup_logging`` receiver), so the CLI's JSON lines hold in
every process; each task's lines carry its job id (``shared.logs.job_id_var``).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Final

from celery import signals
from prometheus_client import Counter, Gauge, Histogram

from shared import logs, prometheus, tasks
from shared.settings import get_settings

log = logging.getLogger(__name__)

SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
LONG_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)

GENERATIONS = Counter("illustrations_generations", "Generation attempts that ended, by outcome and code "
                      "(succeeded, failed, requeued, canceled, lost, skipped).", ["outcome", "code"])
GENERATION_SECONDS = Histogram("illustrations_generation_seconds", "Time on the worker of a succeeded attempt "
                               "(references, inference, store).", ["profile"], buckets=SECONDS)
INFERENCE_SECONDS = Histogram("illustrations_inference_seconds", "The pipeline call of a succeeded attempt.",
                              ["profile"], buckets=SECONDS)
QUEUE_WAIT_SECONDS = Histogram("illustrations_queue_wait_seconds", "Time from submit to the claim of a succeeded "
                               "attempt.", ["queue"], buckets=LONG_SECONDS)
PIPELINE_LOAD_SECONDS = Histogram("illustrations_pipeline_load_seconds", "Loading the pipeline in a worker process "
                                  "(setup, once per process).", ["profile"], buckets=SECONDS)
SETUP_FAILED = Gauge("illustrations_worker_setup_failed", "1 while a worker process could not load its pipeline "
                     "(its jobs fail setup_failed).", multiprocess_mode="livemax")
BUSY = Gauge("illustrations_worker_busy", "Worker processes running a generation now.", ["gpu"],
             multiprocess_mode="livesum")
GPU_MEMORY_PEAK = Gauge("illustrations_gpu_memory_peak_bytes", "Peak GPU memory of the latest generation.", ["gpu"],
                        multiprocess_mode="livemax")
GPU_MEMORY_TOTAL = Gauge("illustrations_gpu_memory_total_bytes", "GPU memory of the device a worker is pinned to.",
                         ["gpu"], multiprocess_mode="livemax")
CONSUMING = Gauge("illustrations_worker_consuming", "Workers consuming each queue now (0 while paused or drained).",
                  ["queue"], multiprocess_mode="livesum")
EMBEDDING_CACHE = Counter("illustrations_embedding_cache_lookups", "Reference embeddings a generation needed, by "
                          "result: hit (from memory or storage: no image read, no encoder run) or miss.", ["result"])
TORCH_COMPILES = Counter("illustrations_torch_compiles", "Graphs torch.compile made for the UNet during jobs "
                         "(ILLUSTRATIONS_TORCH_COMPILE): one per size bucket is expected.")
TORCH_RECOMPILES = Counter("illustrations_torch_recompiles", "Graphs torch.compile made beyond a size bucket's "
                           "first: each is a slow job, and after 8 dynamo runs the UNet uncompiled (should stay 0).")
RELAY_RUNS = Counter("illustrations_relay_runs", "Rounds of the outbox relay run by a maintenance worker.")
RELAY_PUBLISHED = Counter("illustrations_relay_published", "Jobs, trainings and deletions the relay published.")
WEBHOOK_ATTEMPTS = Counter("illustrations_webhook_attempts", "Webhook delivery attempts, by the event's state after "
                           "it (delivered, pending = will retry, stopped = 410, failed, skipped).", ["outcome"])

# Names of the metrics workers export (checked against the alert rules and dashboards).
NAMES: Final = (
    "illustrations_generations_total", "illustrations_generation_seconds", "illustrations_inference_seconds",
    "illustrations_queue_wait_seconds", "illustrations_pipeline_load_seconds", "illustrations_worker_setup_failed",
    "illustrations_worker_busy", "illustrations_gpu_memory_peak_bytes", "illustrations_gpu_memory_total_bytes",
    "illustrations_worker_consuming", "illustrations_relay_runs_total", "illustrations_relay_published_total",
    "illustrations_webhook_attempts_total",
    "illustrations_embedding_cache_lookups_total", "illustrations_torch_compiles_total",
    "illustrations_torch_recompiles_total",
)
JOB_TASKS: Final = frozenset({tasks.GENERATE, tasks.PREPARE, tasks.TRAIN, tasks.PREPARE_STYLE})


def gpu_label() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES") or "cpu"


def attempt_ended(outcome: str) -> None:
    """Count an attempt by the outcome ``run_generation`` returned (``failed:time_limit`` → failed, time_limit)."""
    kind, _, code = outcome.partition(":")
    GENERATIONS.labels(kind, code).inc()


def succeeded(profile: str, queue: str, queue_wait_s: float, total_s: float, inference_s: float | None,
              peak_memory_bytes: int | None) -> None:
    GENERATION_SECONDS.labels(profile).observe(total_s)
    QUEUE_WAIT_SECONDS.labels(queue).observe(queue_wait_s)
    if inference_s is not None:
        INFERENCE_SECONDS.labels(profile).observe(inference_s)
    if peak_memory_bytes is not None:
        GPU_MEMORY_PEAK.labels(gpu_label()).set(peak_memory_bytes)


def compiled(compiles: int, recompiles: int) -> None:
    """Graphs the compiled UNet made during a job (``GenerationResult.compiles``, ``.recompiles``)."""
    if compiles:
        TORCH_COMPILES.inc(compiles)
    if recompiles:
        TORCH_RECOMPILES.inc(recompiles)
        log.warning("the compiled UNet recompiled %d graph(s) for a size it had compiled", recompiles)


def embedding_looked_up(hit: bool) -> None:
    EMBEDDING_CACHE.labels("hit" if hit else "miss").inc()


def pipeline_loaded(profile: str, seconds: float, failed: bool, total_memory_bytes: int | None) -> None:
    PIPELINE_LOAD_SECONDS.labels(profile).observe(seconds)
    SETUP_FAILED.set(1 if failed else 0)
    if total_memory_bytes is not None:
        GPU_MEMORY_TOTAL.labels(gpu_label()).set(total_memory_bytes)


def consuming(queue: str, on: bool) -> None:
    CONSUMING.labels(queue).set(1 if on else 0)


# --- Signals -------------------------------------------------------------------------------------------------------
@signals.setup_logging.connect
def _keep_our_logging(**_: Any) -> None:
    """Connected at all, this stops Celery from configuring logging: the CLI's JSON lines stay."""
    settings = get_settings()
    logs.configure(settings.log_level, settings.log_format)


@signals.task_prerun.connect
def _job_context(task: Any = None, args: Any = None, **_: Any) -> None:
    if task is not None and task.name in JOB_TASKS and args:
        logs.job_id_var.set(str(args[0]))


@signals.task_postrun.connect
def _job_context_done(**_: Any) -> None:
    logs.job_id_var.set(None)


@signals.worker_ready.connect
def _consuming_at_start(sender: Any = None, **_: Any) -> None:
    """``sender`` is the worker's consumer; its app knows the queues consumed from the start."""
    for queue in sender.app.amqp.queues.consume_from:
        consuming(queue, True)


@signals.worker_process_shutdown.connect
def _child_gone(pid: int | None = None, **_: Any) -> None:
    prometheus.mark_dead(pid or os.getpid())


@signals.worker_shutdown.connect
def _main_gone(**_: Any) -> None:
    prometheus.mark_dead(os.getpid())
