"""Faults under load with real processes: nothing accepted is lost, and each job ends exactly once.

Every scenario runs the API under gunicorn, a prefork generation worker, a maintenance worker and beat, with every
timer in seconds; a test that stops a server stops its own (``tests/system/servers.py``), never the shared ones.
Exactly once is read from PostgreSQL (one terminal transition in ``job_transitions``, the images of the winning
attempt in ``job_images``) and from storage (only that attempt's files).
"""

from __future__ import annotations

import collections
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.system.faults import Ledger, Stack, accepted_ids, burst, fast_env
from tests.system.procs import processes, wait_for
from tests.system.servers import RedisServer

pytestmark = pytest.mark.system


def test_kill_9_mid_job_ten_times_alternating_pool_child_and_main_process(
    fresh_pg_url: str, system_redis_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    env = fast_env(tmp_path, fresh_pg_url, system_redis_url, tiny_model_dir)
    ledger = Ledger(fresh_pg_url, tmp_path / "storage")
    long_job = {"user_id": "u-kill", "prompt": "a long walk home", "params": {"width": 64, "height": 64,
                                                                              "steps": 24}}
    with processes(env, tmp_path, tmp_path / "logs") as procs:
        # Two workers: while a killed one is restarted (as a supervisor would), the other keeps taking jobs.
        stack = Stack(procs, env, tmp_path).start(workers=2)
        job_ids = accepted_ids(stack.submit(long_job) for _ in range(12))
        killed: list[str] = []
        found: list[tuple[str, str, int]] = []

        def a_fresh_job_runs() -> bool:
            # Early in its run, so the kill lands mid-job and not after it finished.
            found[:] = [row for row in ledger.running() if row[0] not in killed and row[2] <= 12]
            return bool(found)

        for round_ in range(10):
            wait_for(a_fresh_job_runs, 120, f"a running job to kill (round {round_})", interval_s=0.05)
            job_id, worker_name, _ = found[0]
            node, _, child_pid = worker_name.rpartition(":")
            if round_ % 2 == 0:  # the pool child: Celery's main process sees it die and starts another
                os.kill(int(child_pid), signal.SIGKILL)
            else:  # the main process: its child dies with it (PR_SET_PDEATHSIG); a new worker replaces it
                worker = stack.workers.pop(node)
                os.kill(worker.process.pid, signal.SIGKILL)
                worker.process.wait(30)
                stack.start_worker()
            killed.append(job_id)
        statuses = ledger.wait_terminal(job_ids, 240)
        assert set(statuses.values()) == {"succeeded"}, statuses
        attempts = ledger.assert_exactly_once(job_ids)
        for job_id in killed:
            assert attempts[job_id] >= 2, (job_id, attempts[job_id])  # it was killed, then ran again
    ledger.close()


def test_redis_stopped_during_a_burst_then_started_with_its_data_and_then_wiped(
    fresh_pg_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    redis_server = RedisServer(tmp_path / "redis")
    redis_server.start()
    env = fast_env(tmp_path, fresh_pg_url, redis_server.url, tiny_model_dir)
    ledger = Ledger(fresh_pg_url, tmp_path / "storage")
    try:
        with processes(env, tmp_path, tmp_path / "logs") as procs:
            stack = Stack(procs, env, tmp_path).start(concurrency=2)
            for wipe in (False, True):
                before = ledger.count()
                with ThreadPoolExecutor(1) as background:
                    submits = background.submit(burst, stack, 200)
                    wait_for(lambda: ledger.count() >= before + 60, 120, "60 submits")  # noqa: B023
                    redis_server.stop()
                    wait_for(lambda: ledger.count() >= before + 140, 120, "140 submits")  # noqa: B023
                    if wipe:
                        redis_server.wipe()
                    redis_server.start()
                    responses = submits.result(timeout=300)
                job_ids = accepted_ids(responses)  # 202 for every one, Redis down or not
                assert len(set(job_ids)) == 200
                statuses = ledger.wait_terminal(job_ids, 300)
                assert set(statuses.values()) == {"succeeded"}, collections.Counter(statuses.values())
                ledger.assert_exactly_once(job_ids)
    finally:
        ledger.close()
        redis_server.stop()
