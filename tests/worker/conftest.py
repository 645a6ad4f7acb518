"""Fixtures shared by the worker tests that run a task's logic in process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared import tasks, training
from shared.db import Database
from shared.queue import Publisher, make_celery
from shared.settings import Settings
from shared.storage import Storage, open_storage
from tests.helpers import TRAINING_PARAMS, new_client, png
from tests.httpservers import Server
from worker.runtime import Runtime


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return open_storage(settings)


@pytest.fixture
def publisher(settings: Settings) -> Publisher:
    return Publisher(make_celery(settings, producer=True))


@pytest.fixture
def make_runtime(settings: Settings) -> Iterator[Callable[..., Runtime]]:
    """Makes worker runtimes over the test's settings with the given changes; their engines are disposed after."""
    made: list[Runtime] = []

    def make(**changes: Any) -> Runtime:
        runtime = Runtime(settings.model_copy(update=changes))
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.db.engine.dispose()


@pytest.fixture
def runtime(make_runtime: Callable[..., Runtime], tiny_model_dir: Path) -> Runtime:
    """A worker's runtime on the tiny model with one torch thread (a module that needs other settings overrides it)."""
    return make_runtime(model_dir=tiny_model_dir, torch_threads=1)


@pytest.fixture
def photos() -> Iterator[Server]:
    """A picture server: two pictures and a file that is not one (reached as ``photos.test``, see ``photo_fetcher``)."""
    server = Server({"/dad.png": (200, {"Content-Type": "image/png"}, png((48, 40), "teal")),
                     "/style.png": (200, {"Content-Type": "image/png"}, png((32, 32), "yellow")),
                     "/text.png": (200, {}, b"hello")})
    yield server
    server.close()


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


@pytest.fixture
def claimed_training() -> Callable[[Database, str, float], training.TrainingClaim]:
    """Claims a new training (of a new client's style, no pictures) for ``worker`` with a lease of ``lease_s``."""

    def claim(db: Database, worker: str, lease_s: float) -> training.TrainingClaim:
        client_id = new_client(db)
        with db.begin() as session:
            job_id = training.new_training(session, client_id, "ink", TRAINING_PARAMS, base_profile="tiny",
                                           queue=tasks.QUEUE_TRAINING).job_id
        assert job_id is not None
        with db.begin() as session:
            held = training.claim(session, job_id, worker, lease_s)
        assert isinstance(held, training.TrainingClaim), held
        return held

    return claim
