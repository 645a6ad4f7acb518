"""The stack of the fault tests (API, generation worker, maintenance worker, beat as real processes, every timer in
seconds) and the checks of "exactly once": one terminal transition and one image set per job, read from
PostgreSQL and from storage."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

from tests.helpers import wait_for
from tests.system.procs import Processes, free_port, http_ok, run_cli

TERMINAL = ("succeeded", "failed", "canceled")
TINY_JOB = {"user_id": "u-fault", "prompt": "a lighthouse at dusk", "params": {"width": 64, "height": 64, "steps": 2}}


def fast_env(tmp_path: Path, database_url: str, broker_url: str, model_dir: Path, **overrides: str) -> dict[str, str]:
    """Settings (names without the ILLUSTRATIONS_ prefix) with every timer in seconds."""
    values = {
        "VAR_DIR": str(tmp_path / "var"),
        "DATABASE_URL": database_url,
        "BROKER_URL": broker_url,
        "STORAGE_URL": str(tmp_path / "storage"),
        "MODEL_DIR": str(model_dir),
        "TORCH_THREADS": "1",
        "API_WORKERS": "2",
        "LEASE_S": "3",
        "HEARTBEAT_S": "0.5",
        "RELAY_INTERVAL_S": "0.5",
        "RELAY_DELAY_S": "1",
        "MAX_ATTEMPTS": "6",
        "TASK_SOFT_TIME_LIMIT_S": "60",
        "TASK_TIME_LIMIT_S": "70",
        "VISIBILITY_TIMEOUT_S": "90",
        "RETRY_BACKOFF_S": "0.2",
        "RETRY_BACKOFF_MAX_S": "1",
        "DB_RETRY_S": "0.2",
        "DB_RETRY_MAX_S": "1",
        "DB_CONNECT_TIMEOUT_S": "1",
        "WORKER_SOFT_SHUTDOWN_S": "2",
        "PROGRESS_INTERVAL_S": "0.2",
        "PUBLISH_TIMEOUT_S": "0.5",
        "BROKER_SOCKET_TIMEOUT_S": "2",
        "RETRY_AFTER_S": "1",
        "REPUBLISH_AFTER_S": "30",
        "RATE_LIMIT": "",  # the load here is the point: no per-key request limit
    }
    values.update(overrides)
    from tests.system.procs import clean_env

    return clean_env(**values)


MAINTENANCE = ("maintenance", "worker", "--queues", "illustrations.maintenance", "--pool", "threads", "--concurrency",
               "2", "--hostname", "maintenance@fault")


class Stack:
    """The API under gunicorn, workers and beat, started with the project's CLI."""

    def __init__(self, procs: Processes, env: dict[str, str], cwd: Path) -> None:
        self.procs, self.env, self.cwd = procs, env, cwd
        key = run_cli(["keys", "create", "--name", f"fault-{uuid.uuid4().hex[:6]}"], env, cwd).stdout
        self.headers = {"Authorization": f"Bearer {key.strip().splitlines()[-1]}"}
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workers: dict[str, Any] = {}  # node name -> its Proc
        self.started_workers = 0

    def start(self, *, api: bool = True, beat: bool = True, workers: int = 1, concurrency: int = 1) -> Stack:
        if api:
            self.procs.start("api", "api", "--bind", f"127.0.0.1:{self.port}")
        for _ in range(workers):
            self.start_worker(concurrency=concurrency)
        if beat:
            self.maintenance = self.procs.start(*MAINTENANCE)
            self.procs.start("beat", "beat")
        if api:
            wait_for(http_ok(f"{self.base}/healthz"), 90, "the API")
        return self

    def start_worker(self, concurrency: int = 1, **settings: str) -> Any:
        """Start one more generation worker; ``settings`` (names without the prefix) apply to it alone."""
        self.started_workers += 1
        name = f"gpu{self.started_workers}@fault"
        env = {f"ILLUSTRATIONS_{key}": value for key, value in settings.items()}
        self.workers[name] = self.procs.start(f"worker-{self.started_workers}", "worker", "--hostname", name,
                                              "--concurrency", str(concurrency), env=env)
        return self.workers[name]

    def supervise(self) -> list[str]:
        """What a supervisor (Kubernetes, compose ``restart:``) does: start again a worker that exited by itself.
        Returns the names restarted. (kombu 5.7 can crash a worker whose broker connection drops while it holds
        unacked messages; see worker/tasks/maintenance.py.)"""
        restarted = []
        for name, worker in list(self.workers.items()):
            if not worker.alive():
                del self.workers[name]
                self.start_worker()
                restarted.append(name)
        if getattr(self, "maintenance", None) is not None and not self.maintenance.alive():
            self.maintenance = self.procs.start(*MAINTENANCE)
            restarted.append("maintenance")
        return restarted

    def submit(self, body: dict[str, Any] | None = None, **headers: str) -> requests.Response:
        return requests.post(f"{self.base}/v1/illustrations", json=body or TINY_JOB,
                             headers={**self.headers, **headers}, timeout=30)


def burst(stack: Stack, count: int, threads: int = 8, body: dict[str, Any] | None = None) -> list[requests.Response]:
    """``count`` submits from ``threads`` concurrent clients, in order of completion."""
    def one(_: int) -> requests.Response:
        return stack.submit(body)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))


class Ledger:
    """Reads the truth from PostgreSQL and from the local store."""

    def __init__(self, database_url: str, storage_dir: Path) -> None:
        self.engine = sa.create_engine(database_url, pool_pre_ping=True)
        self.storage_dir = storage_dir

    def close(self) -> None:
        self.engine.dispose()

    def statuses(self, job_ids: Iterable[str]) -> dict[str, str]:
        ids = list(job_ids)
        with self.engine.connect() as connection:
            rows = connection.execute(sa.text("SELECT id, status FROM jobs WHERE id = ANY(:ids)"), {"ids": ids})
            return {row.id: row.status for row in rows}

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one())

    def running(self) -> list[tuple[str, str, int, int]]:
        """Running jobs that made progress: (id, worker, progress_step, attempt)."""
        with self.engine.connect() as connection:
            rows = connection.execute(sa.text(
                "SELECT id, worker, progress_step, attempt FROM jobs WHERE status = 'running' AND progress_step > 0"))
            return [(row.id, row.worker, row.progress_step, row.attempt) for row in rows]

    def transitions(self, job_id: str) -> list[tuple[str | None, str, int, str | None]]:
        """(from, to, attempt, reason), oldest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(sa.text(
                "SELECT from_status, to_status, attempt, reason FROM job_transitions WHERE job_id = :id ORDER BY id"),
                {"id": job_id})
            return [(row.from_status, row.to_status, row.attempt, row.reason) for row in rows]

    def wait_terminal(self, job_ids: Iterable[str], timeout_s: float,
                      supervise: Callable[[], object] | None = None) -> dict[str, str]:
        ids = list(job_ids)
        statuses: dict[str, str] = {}

        def done() -> bool:
            if supervise is not None:
                supervise()
            statuses.update(self.statuses(ids))
            return all(statuses.get(job_id) in TERMINAL for job_id in ids)

        try:
            wait_for(done, timeout_s, f"{len(ids)} jobs to finish", interval_s=0.5)
        except AssertionError:
            pending = {job_id: statuses.get(job_id) for job_id in ids if statuses.get(job_id) not in TERMINAL}
            raise AssertionError(f"{len(pending)} of {len(ids)} jobs unfinished: {list(pending.items())[:5]}") from None
        return statuses

    def assert_exactly_once(self, job_ids: Iterable[str], num_images: int = 1) -> dict[str, int]:
        """Each job succeeded with one terminal transition, ``num_images`` image rows, and in storage exactly the
        winning attempt's files. Returns the attempts per job."""
        ids = list(job_ids)
        with self.engine.connect() as connection:
            jobs = {row.id: row for row in connection.execute(
                sa.text("SELECT id, status, attempt FROM jobs WHERE id = ANY(:ids)"), {"ids": ids})}
            terminal = dict(connection.execute(sa.text(
                "SELECT job_id, count(*) FROM job_transitions WHERE job_id = ANY(:ids)"
                " AND to_status IN ('succeeded', 'failed', 'canceled') GROUP BY job_id"), {"ids": ids}).all())
            images: dict[str, list[str]] = {}
            for row in connection.execute(sa.text(
                    "SELECT job_id, storage_key FROM job_images WHERE job_id = ANY(:ids)"), {"ids": ids}):
                images.setdefault(row.job_id, []).append(row.storage_key)
        assert len(jobs) == len(ids), "jobs missing from PostgreSQL"
        for job_id in ids:
            job = jobs[job_id]
            assert job.status == "succeeded", (job_id, job.status)
            assert terminal.get(job_id) == 1, (job_id, terminal.get(job_id))
            keys = sorted(images.get(job_id, []))
            assert len(keys) == num_images, (job_id, keys)
            assert {key.split("/")[2] for key in keys} == {str(job.attempt)}, (job_id, job.attempt, keys)
            stored = sorted(str(path.relative_to(self.storage_dir)) for path in
                            (self.storage_dir / "jobs" / job_id).rglob("*") if path.is_file())
            assert stored == keys, (job_id, stored, keys)
        return {job_id: jobs[job_id].attempt for job_id in ids}


def accepted_ids(responses: Iterable[requests.Response]) -> list[str]:
    ids = []
    for response in responses:
        assert response.status_code == 202, (response.status_code, response.text[:300])
        ids.append(response.json()["id"])
    return ids


def elapsed(since: float) -> float:
    return round(time.monotonic() - since, 1)
