"""`illustrations worker --gpus 0,1` on a CPU: one Celery worker process per GPU, each pinned and named for it.

Real processes on PostgreSQL and Redis: the launcher starts two workers; each answers the remote-control command
`illustrations_device` with its own CUDA_VISIBLE_DEVICES and name; jobs run and their metrics rows name the
worker and its GPU; a job past the soft time limit fails `time_limit` and the worker keeps serving; a worker that
dies is started again; SIGTERM stops them all.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shared.db import Database
from shared.models import GenerationMetric
from shared.queue import Publisher, make_celery
from shared.settings import Settings
from tests.helpers import add_job, load, request_doc, wait_for
from tests.system.procs import clean_env, processes

pytestmark = pytest.mark.system


def devices(app: Any) -> dict[str, dict[str, Any]]:
    replies = app.control.broadcast("illustrations_device", reply=True, timeout=1.0)
    return {name: info for reply in replies for name, info in reply.items()}


def test_one_pinned_worker_per_gpu(pg_url: str, system_redis_url: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    env = clean_env(VAR_DIR=str(tmp_path / "var"), DATABASE_URL=pg_url, BROKER_URL=system_redis_url,
                    STORAGE_URL=str(tmp_path / "storage"), MODEL_DIR=str(tiny_model_dir), TORCH_THREADS="1",
                    TASK_SOFT_TIME_LIMIT_S="2", TASK_TIME_LIMIT_S="60", WORKER_RESTART_DELAY_S="0.2")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    settings = Settings(database_url=pg_url, broker_url=system_redis_url)
    app = make_celery(settings, "test-client", producer=True)
    db = Database(settings)
    with processes(env, tmp_path, tmp_path / "logs") as procs:
        launcher = procs.start("workers", "worker", "--gpus", "0,1", "--hostname", "test-host")
        wait_for(lambda: len(devices(app)) == 2, 120, "two workers answering")
        first = devices(app)
        assert {name: info["cuda_visible_devices"] for name, info in first.items()} == {
            "gpu0@test-host": "0", "gpu1@test-host": "1"}
        assert len({info["pid"] for info in first.values()} | {launcher.process.pid}) == 3

        quick = [add_job(db, request=request_doc(), seed=s) for s in (1, 2)]
        slow = add_job(db, request=request_doc(steps=100, width=512, height=512))  # far beyond 2 s on a CPU
        publisher = Publisher(app)
        for job_id in (slow, *quick):
            assert publisher.publish(job_id, "illustrations.interactive")
        wait_for(lambda: all(load(db, j).finished_at for j in (slow, *quick)), 120, "three jobs finished", 0.2)
        assert [load(db, j).status for j in quick] == ["succeeded", "succeeded"]
        late = load(db, slow)
        assert (late.status, late.error_code) == ("failed", "time_limit")
        with db.begin() as session:
            rows = list(session.execute(
                select(GenerationMetric).where(GenerationMetric.job_id.in_([slow, *quick]))).scalars())
        assert len(rows) == 3
        for row in rows:  # each row names the worker that ran it and the GPU that worker was pinned to
            assert row.worker is not None
            assert row.gpu is not None
            assert row.worker.startswith(f"gpu{row.gpu}@test-host:")
            assert row.device == "cpu"
        after = add_job(db, request=request_doc(), seed=3)  # the worker that hit the limit still serves
        assert publisher.publish(after, "illustrations.interactive")
        wait_for(lambda: load(db, after).status == "succeeded", 60, "a job after the time limit")

        os.kill(first["gpu1@test-host"]["pid"], signal.SIGKILL)  # a per-GPU worker dies; the launcher restarts it
        dead = first["gpu1@test-host"]["pid"]
        wait_for(lambda: devices(app).get("gpu1@test-host", {}).get("pid") not in (None, dead), 120, "gpu1 restarted")
        assert devices(app)["gpu1@test-host"]["cuda_visible_devices"] == "1"

        os.kill(launcher.process.pid, signal.SIGTERM)
        assert launcher.process.wait(90) == 0
        wait_for(lambda: devices(app) == {}, 30, "every worker stopped")
    db.engine.dispose()
