"""Fixtures of the system tests that run fault scenarios."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import new_database


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A migrated database of its own on the shared PostgreSQL: the relay of a fault test must see only its jobs."""
    with new_database("illustrations_fault") as url:
        yield url
