"""prometheus_client in multiprocess mode, for the API (gunicorn workers) and the workers (Celery prefork).

Each process writes its samples to memory-mapped files in the folder named by ``PROMETHEUS_MULTIPROC_DIR``, which
prometheus_client reads when it is first imported: so the folder is set up by the command that starts a process
tree, before anything imports prometheus_client, and every process of the tree inherits it. A scrape merges the
files of every process (``MultiProcessCollector``). Each tree owns its folder under
``ILLUSTRATIONS_METRICS_DIR`` (default ``var/prometheus``), named for what it serves (``api-<bind>``,
``worker-<node name>``), and wipes it at start, as prometheus_client requires; a process that ends is marked dead
so its ``live*`` gauges leave the sum.

A multi-GPU ``illustrations worker`` owns one folder for all its per-GPU workers and serves it; the children it
starts find ``INHERITED`` in their environment and neither wipe nor serve. Without a folder (tests in one process),
the metrics live in prometheus_client's default registry.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector, CollectorRegistry

log = logging.getLogger(__name__)

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
# Set by a process that owns the folder for the processes it starts (they inherit, never wipe, never serve).
INHERITED: Final = "ILLUSTRATIONS_METRICS_INHERITED"
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


def folder_name(kind: str, name: str) -> str:
    """A file-system-safe folder name: ``api-127.0.0.1-8000``, ``worker-gpu0-host``."""
    return f"{kind}-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "default")


def own_folder(parent: Path, kind: str, name: str) -> Path:
    """Make this process tree's multiprocess folder (empty) and point ``PROMETHEUS_MULTIPROC_DIR`` at it.

    Call before prometheus_client is imported. A folder inherited from a parent is kept as it is.
    """
    inherited = os.environ.get(MULTIPROC_ENV)
    if inherited and os.environ.get(INHERITED):
        return Path(inherited)
    folder = parent / folder_name(kind, name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_ENV] = str(folder)
    os.environ.pop(INHERITED, None)
    return folder


def serves() -> bool:
    """Whether this process serves its folder (False in children of a process that does)."""
    return not os.environ.get(INHERITED)


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


def scrape_registry(extra: Iterable[Collector] = ()) -> CollectorRegistry:
    """What a scrape reads: every process's samples (multiprocess) or this process's default registry, plus
    ``extra`` collectors (read at scrape time, e.g. from the database)."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if multiprocess():
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return registry


def render(extra: Iterable[Collector] = ()) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(scrape_registry(extra))


def serve(port: int, address: str) -> None:
    """Serve this process tree's metrics (every process's samples) on ``address:port`` from a daemon thread."""
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=address, registry=scrape_registry())
    except OSError as exc:  # a busy port must not stop a worker from working
        log.error("metrics exporter not started on %s:%d (%s)", address, port, exc)
        return
    log.info("metrics on http://%s:%d/metrics", address, port)


def mark_dead(pid: int) -> None:
    """A process of the tree ended: drop its live gauges (no-op outside multiprocess mode)."""
    if multiprocess():
        from prometheus_client import multiprocess as mp

        mp.mark_process_dead(pid)


class _Forward:
    """The default registry as one collector of a scrape registry (so extra collectors join it for one scrape)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        return self.registry.collect()

    def describe(self) -> list[Metric]:
        return []
