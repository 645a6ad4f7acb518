"""Queues with a real worker: interactive work strictly before batch work, and the queue position that says so."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from tests.system.faults import TINY_JOB, Ledger, Stack, accepted_ids, fast_env
from tests.system.procs import processes

pytestmark = pytest.mark.system


def test_interactive_jobs_run_before_batch_jobs_queued_earlier(fresh_pg_url: str, system_redis_url: str,
                                                               tiny_model_dir: Path, tmp_path: Path) -> None:
    env = fast_env(tmp_path, fresh_pg_url, system_redis_url, tiny_model_dir)
    ledger = Ledger(fresh_pg_url, tmp_path / "storage")
    with processes(env, tmp_path, tmp_path / "logs") as procs:
        stack = Stack(procs, env, tmp_path).start(workers=0, beat=False)
        batch = accepted_ids([stack.submit({**TINY_JOB, "priority": "batch"}) for _ in range(4)])
        interactive = accepted_ids([stack.submit(TINY_JOB) for _ in range(4)])
        positions = [requests.get(f"{stack.base}/v1/illustrations/{job_id}", headers=stack.headers,
                                  timeout=10).json()["queue_position"] for job_id in interactive + batch]
        assert positions == [0, 1, 2, 3, 4, 5, 6, 7]
        stack.start_worker()
        ledger.wait_terminal(batch + interactive, 120)
        with ledger.engine.connect() as connection:
            started = dict(connection.execute(sa.text("SELECT id, started_at FROM jobs")).all())
        assert max(started[job_id] for job_id in interactive) < min(started[job_id] for job_id in batch)
        ledger.assert_exactly_once(batch + interactive)
    ledger.close()
