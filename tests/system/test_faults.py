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
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from shared.migrate import upgrade
from shared.settings import Settings
from tests.helpers import wait_for
from tests.system.faults import TINY_JOB, Ledger, Stack, accepted_ids, burst, fast_env
from tests.system.procs import processes
from tests.system.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.system


def test_kill_9_mid_job_ten_times_alternating_pool_child_and_main_process(
    fresh_pg_url: str, system_broker_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """On Redis and on RabbitMQ (the tested alternative broker)."""
    env = fast_env(tmp_path, fresh_pg_url, system_broker_url, tiny_model_dir)
    ledger = Ledger(fresh_pg_url, tmp_path / "storage")
    long_job = {"user_id": "u-kill", "prompt": "a long walk home", "params": {"width": 64, "height": 64,
                                                                              "steps": 100}}
    with processes(env, tmp_path, tmp_path / "logs") as procs:
        # Two workers: while a killed one is restarted (as a supervisor would), the other keeps taking jobs.
        stack = Stack(procs, env, tmp_path).start(workers=2)
        job_ids = accepted_ids(stack.submit(long_job) for _ in range(12))
        kills: collections.Counter[str] = collections.Counter()
        dead: set[tuple[str, int]] = set()  # (job, attempt) already killed: its row says running until the sweep
        found: list[tuple[str, str, int, int]] = []

        def a_live_attempt_runs() -> bool:
            # Early in its run (at most 40 of its 100 steps; the first progress write comes after
            # ILLUSTRATIONS_PROGRESS_INTERVAL_S, ~15 steps on a quiet machine), so the kill lands mid-job.
            found[:] = [row for row in ledger.running() if (row[0], row[3]) not in dead and row[2] <= 40]
            if not found and not {"queued", "running"} & set(ledger.statuses(job_ids).values()):
                # On a quiet machine the jobs may all be done before ten kills: give the workers another one.
                job_ids.extend(accepted_ids([stack.submit(long_job)]))
            return bool(found)

        while sum(kills.values()) < 10:
            wait_for(a_live_attempt_runs, 120, f"a running job to kill (kill {sum(kills.values()) + 1})",
                     interval_s=0.05)
            job_id, worker_name, _, attempt = found[0]
            node, _, child_pid = worker_name.rpartition(":")
            dead.add((job_id, attempt))
            try:
                if sum(kills.values()) % 2 == 0:  # the pool child: Celery's main process starts another
                    os.kill(int(child_pid), signal.SIGKILL)
                else:  # the main process: its child dies with it (PR_SET_PDEATHSIG); a new worker replaces it
                    worker = stack.workers.pop(node)
                    os.kill(worker.process.pid, signal.SIGKILL)
                    worker.process.wait(30)
                    stack.start_worker()
            except (ProcessLookupError, KeyError):
                continue  # that attempt ended just now: pick another one
            kills[job_id] += 1
        statuses = ledger.wait_terminal(job_ids, 240)
        assert set(statuses.values()) == {"succeeded"}, statuses
        attempts = ledger.assert_exactly_once(job_ids)
        for job_id, times in kills.items():
            assert attempts[job_id] >= times + 1, (job_id, attempts[job_id])  # killed, then ran again
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
            restarts: list[str] = []
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
                restarts += stack.supervise()
                statuses = ledger.wait_terminal(job_ids, 300, supervise=stack.supervise)
                assert set(statuses.values()) == {"succeeded"}, collections.Counter(statuses.values())
                ledger.assert_exactly_once(job_ids)
            print("processes restarted after the outages:", restarts or "none")
    finally:
        ledger.close()
        redis_server.stop()


def test_postgresql_stopped_for_ten_seconds_under_load(system_redis_url: str, tiny_model_dir: Path,
                                                       tmp_path: Path) -> None:
    postgres = PostgresServer()
    try:
        postgres.start()
        upgrade(Settings(database_url=postgres.url))
        env = fast_env(tmp_path, postgres.url, system_redis_url, tiny_model_dir)
        ledger = Ledger(postgres.url, tmp_path / "storage")
        with processes(env, tmp_path, tmp_path / "logs") as procs:
            stack = Stack(procs, env, tmp_path).start(concurrency=2)
            stop = threading.Event()
            outcomes: list[tuple[int, str | None, str | None]] = []  # status, Retry-After, job id

            def client() -> None:
                with requests.Session() as session:
                    while not stop.is_set():
                        response = session.post(f"{stack.base}/v1/illustrations", json=TINY_JOB,
                                                headers=stack.headers, timeout=30)
                        job_id = response.json().get("id") if response.status_code == 202 else None
                        outcomes.append((response.status_code, response.headers.get("Retry-After"), job_id))
                        stop.wait(0.05)

            with ThreadPoolExecutor(4) as clients:
                running = [clients.submit(client) for _ in range(4)]
                wait_for(lambda: len(outcomes) >= 40, 60, "load before the outage")
                postgres.stop()
                down_at = len(outcomes)
                wait_for(lambda: len(outcomes) >= down_at + 20, 30, "submits during the outage")
                stop.wait(10)  # the outage: PostgreSQL stays down 10 s while the clients keep submitting
                postgres.start()
                up_at = len(outcomes)
                wait_for(lambda: sum(1 for o in outcomes[up_at:] if o[0] == 202) >= 40, 90, "load after the outage")
                stop.set()
                for future in running:
                    future.result(timeout=60)  # no client saw a connection error or a timeout
            codes = collections.Counter(status for status, _, _ in outcomes)
            assert set(codes) == {202, 503}, codes  # 503s during, never a 500
            assert all(retry_after for status, retry_after, _ in outcomes if status == 503)
            job_ids = [job_id for status, _, job_id in outcomes if status == 202 and job_id]
            statuses = ledger.wait_terminal(job_ids, 300)
            assert set(statuses.values()) == {"succeeded"}, collections.Counter(statuses.values())
            ledger.assert_exactly_once(job_ids)
            # Nothing half-written: every row is a job somebody got a 202 for.
            assert ledger.count() == len(job_ids)
        ledger.close()
    finally:
        postgres.remove()


def test_sigterm_mid_job_gives_the_job_back_or_lets_it_finish(
    fresh_pg_url: str, system_redis_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    grace_s = 1
    env = fast_env(tmp_path, fresh_pg_url, system_redis_url, tiny_model_dir, WORKER_SOFT_SHUTDOWN_S=str(grace_s))
    ledger = Ledger(fresh_pg_url, tmp_path / "storage")
    long_job = {"user_id": "u-term", "prompt": "the whole family at the table",
                "params": {"width": 128, "height": 128, "steps": 100}}  # several times the grace period
    # Long enough to be seen running, far shorter than the second worker's grace period.
    short_job = {**long_job, "params": {"width": 64, "height": 64, "steps": 40}}
    with processes(env, tmp_path, tmp_path / "logs") as procs:
        stack = Stack(procs, env, tmp_path).start()
        (first,) = stack.workers.values()
        stack.workers.clear()

        # 1. A job longer than the grace period: cancelled when the grace ends, it gives its job back at once.
        (long_id,) = accepted_ids([stack.submit(long_job)])
        wait_for(lambda: any(row[0] == long_id for row in ledger.running()), 60, "the long job to run")
        first.process.send_signal(signal.SIGTERM)  # what Kubernetes or `docker stop` sends the main process
        first.process.wait(grace_s + 20)
        assert ledger.transitions(long_id)[-1][:2] == ("running", "queued"), ledger.transitions(long_id)
        assert ledger.transitions(long_id)[-1][3] == "shutdown"
        stack.start_worker(WORKER_SOFT_SHUTDOWN_S="30")  # the replacement takes it over; it has a long grace
        assert ledger.wait_terminal([long_id], 120) == {long_id: "succeeded"}
        assert ledger.assert_exactly_once([long_id]) == {long_id: 2}

        # 2. A job shorter than the grace period finishes before the worker exits.
        (second,) = stack.workers.values()
        (short_id,) = accepted_ids([stack.submit(short_job)])
        wait_for(lambda: any(row[0] == short_id for row in ledger.running()), 60, "the short job to run",
                 interval_s=0.02)
        second.process.send_signal(signal.SIGTERM)
        second.process.wait(60)
        assert ledger.statuses([short_id]) == {short_id: "succeeded"}
        assert ledger.assert_exactly_once([short_id]) == {short_id: 1}
    ledger.close()
