"""Fixtures shared by the API tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from shared.experiments import Experiment
from shared.settings import Settings


@pytest.fixture
def experiment_app(settings: Settings) -> Iterator[Flask]:
    """The API with an A/B experiment on: half the jobs get variant ``b``, which runs 5 steps at guidance 3."""
    from api import create_app

    experiment = Experiment(name="steps-5", share=0.5, steps=5, guidance_scale=3.0)
    app = create_app(settings.model_copy(update={"experiment": experiment}))
    yield app
    app.extensions["illustrations"].waiter.close()
    app.extensions["illustrations"].db.engine.dispose()
