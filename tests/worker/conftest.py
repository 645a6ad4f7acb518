"""Fixtures shared by the worker tests that run a task's logic in process."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from shared import tasks, training
from shared.db import Database
from shared.models import Client
from shared.queue import Publisher, make_celery
from shared.settings import Settings
from shared.storage import Storage, open_storage
from worker.runtime import Runtime


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return open_storage(settings)


@pytest.fixture
def publisher(settings: Settings) -> Publisher:
    return Publisher(make_celery(settings, producer=True))


@pytest.fixture
def main_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Runtime, str], None]]:
    """Makes this process look like a worker's main process: ``get_runtime()`` gives the runtime, and Celery named the
    node (``celeryd_after_setup``, remembered by ``worker.node``)."""
    from worker import node as worker_node
    from worker import runtime as runtime_module

    def become(runtime: Runtime, node: str) -> None:
        monkeypatch.setattr(runtime_module, "_runtime", runtime)
        worker_node._remember(sender=node, instance=None)

    yield become
    worker_node.name = None


TRAINING_PARAMS = {"rank": 4, "alpha": 4, "steps": 10, "learning_rate": 1e-3, "resolution": 64, "seed": 1,
                   "batch_size": 1}


@pytest.fixture
def claimed_training() -> Callable[[Database, str, float], training.TrainingClaim]:
    """Claims a new training (of a new client's style, no pictures) for ``worker`` with a lease of ``lease_s``."""

    def claim(db: Database, worker: str, lease_s: float) -> training.TrainingClaim:
        with db.begin() as session:
            client = Client(name=f"c-{time.monotonic_ns()}")
            session.add(client)
            session.flush()
            job_id = training.new_training(session, client.id, "ink", TRAINING_PARAMS, base_profile="tiny",
                                           queue=tasks.QUEUE_TRAINING).job_id
        assert job_id is not None
        with db.begin() as session:
            held = training.claim(session, job_id, worker, lease_s)
        assert isinstance(held, training.TrainingClaim), held
        return held

    return claim
