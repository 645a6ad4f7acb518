"""The result cache with real processes: the API under gunicorn and a Celery generation worker on the tiny model.

Two identical seeded requests while the first is in flight: one pipeline run (one metrics row), both succeed with
the same images, the follower never reaches the broker. Then, with the worker stopped, the same request is answered
inside the POST (``Prefer: wait``) from the stored images.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from tests.system.faults import Stack, fast_env
from tests.system.procs import processes

pytestmark = pytest.mark.system

SEEDED = {"user_id": "u-cache", "prompt": "a lighthouse at dusk",
          "params": {"width": 64, "height": 64, "steps": 8, "seed": 77}}


def test_two_identical_jobs_one_run_then_hits_with_no_worker(fresh_pg_url: str, system_redis_url: str,
                                                             tiny_model_dir: Path, tmp_path: Path) -> None:
    env = fast_env(tmp_path, fresh_pg_url, system_redis_url, tiny_model_dir)
    with processes(env, tmp_path, tmp_path / "logs") as procs:
        stack = Stack(procs, env, tmp_path).start(beat=False, workers=1)
        leader = stack.submit(SEEDED).json()
        follower = stack.submit({**SEEDED, "user_id": "u-other"}).json()
        assert follower["status"] == "queued"
        done = requests.get(f"{stack.base}/v1/illustrations/{follower['id']}", timeout=90,
                            headers={**stack.headers, "Prefer": "wait=60"}).json()
        first = requests.get(f"{stack.base}/v1/illustrations/{leader['id']}", timeout=30, headers=stack.headers).json()
        assert first["status"] == done["status"] == "succeeded"
        assert done["cached"] is True
        assert first["cached"] is False
        assert [image["sha256"] for image in done["images"]] == [image["sha256"] for image in first["images"]]

        for worker in list(stack.workers.values()):
            worker.stop()
        hit = stack.submit(SEEDED, Prefer="wait=10")
        assert hit.status_code == 200, hit.text
        assert hit.json()["cached"] is True
        assert hit.json()["images"][0]["sha256"] == first["images"][0]["sha256"]

    engine = sa.create_engine(fresh_pg_url)
    with engine.connect() as connection:
        runs = connection.execute(sa.text("SELECT job_id FROM generation_metrics")).scalars().all()
        published = connection.execute(sa.text("SELECT published_at FROM jobs WHERE id = :id"),
                                       {"id": follower["id"]}).scalar_one()
    engine.dispose()
    assert runs == [leader["id"]]  # one pipeline run for three jobs
    assert published is None  # the follower never went to the broker
