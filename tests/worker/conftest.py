"""Fixtures shared by the worker tests that run a task's logic in process."""

from __future__ import annotations

import pytest

from shared.queue import Publisher, make_celery
from shared.settings import Settings
from shared.storage import Storage, open_storage


@pytest.fixture
def storage(settings: Settings) -> Storage:
    return open_storage(settings)


@pytest.fixture
def publisher(settings: Settings) -> Publisher:
    return Publisher(make_celery(settings, producer=True))
