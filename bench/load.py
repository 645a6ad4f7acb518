"""Submit load over HTTP: 1,000 jobs from 20 concurrent clients against the real stack (a benchmark, not a test).

Starts its own stack with the project's CLI (API under gunicorn with 2 processes, 2 generation workers with the
tiny model, a maintenance worker and beat) on a fresh PostgreSQL database and an emptied Redis db, then runs two
phases:

- ``paused``: the generation workers are not running while the jobs are submitted (the queue only grows); they
  are started afterwards to drain it.
- ``running``: the generation workers run while the jobs are submitted.

- ``bare``: the same submits against a bare Flask JSON endpoint (``bench.bare``: parse the body, answer 202 with an
  id) served by gunicorn with the API's own options (same processes, threads, access log) on the same machine,
  between the two phases above: what HTTP, gunicorn and Flask cost before any of our work. The ratios compare the
  ``paused`` phase (the API's own work, no worker competing for the CPU) with it.

For each phase: submit latency p50/p99 (ms), submits/s, and after every job finished: lost (accepted but not
succeeded) and duplicated (more than one terminal transition, or more than one image set).

    .venv/bin/python bench/load.py [--jobs 1000] [--clients 20] [--tenants 1] [--phases paused,bare,running]
                                   [--redis-url redis://127.0.0.1:6379/15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scratch import scratch
from tests.system.faults import TINY_JOB, Ledger, Stack, fast_env
from tests.system.procs import Proc, free_port, http_ok, processes, run_cli, wait_for

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("paused", "bare", "running")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def submit_all(base: str, keys: list[str], jobs: int, clients: int) -> tuple[list[float], list[str], float]:
    """``jobs`` submits spread over ``clients`` threads, each with its own HTTP session and key (round robin)."""
    latencies: list[float] = []
    ids: list[str] = []
    per_client = [jobs // clients + (1 if i < jobs % clients else 0) for i in range(clients)]

    def client(index: int) -> None:
        headers = {"Authorization": f"Bearer {keys[index % len(keys)]}"}
        with requests.Session() as session:
            for _ in range(per_client[index]):
                started = time.perf_counter()
                response = session.post(f"{base}/v1/illustrations", json=TINY_JOB, headers=headers, timeout=30)
                latencies.append(time.perf_counter() - started)
                if response.status_code != 202:
                    raise RuntimeError(f"submit answered {response.status_code}: {response.text[:200]}")
                ids.append(response.json()["id"])

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    return latencies, ids, time.perf_counter() - started


def duplicated(ledger: Ledger, ids: list[str]) -> int:
    with ledger.engine.connect() as connection:
        twice = connection.execute(sa.text(
            "SELECT count(*) FROM (SELECT job_id FROM job_transitions WHERE job_id = ANY(:ids)"
            " AND to_status IN ('succeeded', 'failed', 'canceled') GROUP BY job_id HAVING count(*) > 1) t"),
            {"ids": ids}).scalar_one()
    extra_sets = 0
    for job_id in ids:
        attempts = {path.name for path in (ledger.storage_dir / "jobs" / job_id).iterdir()} \
            if (ledger.storage_dir / "jobs" / job_id).is_dir() else set()
        extra_sets += len(attempts) > 1
    return int(twice) + extra_sets


def phase(name: str, stack: Stack, ledger: Ledger, keys: list[str], args: argparse.Namespace,
          workers_before: bool) -> dict[str, Any]:
    if workers_before:
        for _ in range(2):
            stack.start_worker()
    latencies, ids, wall = submit_all(stack.base, keys, args.jobs, args.clients)
    if not workers_before:
        for _ in range(2):
            stack.start_worker()
    statuses = ledger.wait_terminal(ids, args.drain_timeout)
    for worker in list(stack.workers.values()):
        worker.stop()
    stack.workers.clear()
    return {
        "phase": name,
        "jobs": len(ids),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
        "submits_per_s": round(len(ids) / wall, 1),
        "lost": sum(1 for job_id in ids if statuses.get(job_id) != "succeeded"),
        "duplicated": duplicated(ledger, ids),
    }


def bare_phase(procs: Any, env: dict[str, str], work: Path, keys: list[str],
               args: argparse.Namespace) -> dict[str, Any]:
    """The same submits against the bare Flask endpoint under the API's gunicorn options."""
    port = free_port()
    server = Proc("bare-flask", [sys.executable, "-m", "bench.bare", "flask", "--bind", f"127.0.0.1:{port}"],
                  {**env, "PYTHONPATH": str(ROOT)}, ROOT, work / "logs")
    procs.started.append(server)
    base = f"http://127.0.0.1:{port}"
    wait_for(http_ok(f"{base}/healthz"), 60, "the bare Flask server")
    latencies, ids, wall = submit_all(base, keys, args.jobs, args.clients)
    server.stop()
    return {
        "phase": "bare",
        "jobs": len(ids),
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies, 99) * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1),
        "submits_per_s": round(len(ids) / wall, 1),
        "lost": "",
        "duplicated": "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=20, help="concurrent HTTP clients")
    parser.add_argument("--tenants", type=int, default=1, help="API clients (keys) the HTTP clients share")
    parser.add_argument("--admin-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15", help="an emptied Redis db")
    parser.add_argument("--drain-timeout", type=float, default=1800)
    parser.add_argument("--phases", default=",".join(PHASES), help="which phases, in this order: paused,bare,running")
    args = parser.parse_args()
    phases = [p for p in args.phases.split(",") if p]
    if not phases or set(phases) - set(PHASES):
        parser.error(f"--phases must name some of {', '.join(PHASES)}")
    load_before = os.getloadavg()

    with scratch(args.admin_url, args.redis_url, "illustrations-bench-") as (work, url):
        model_dir = work / "models" / "tiny"
        env = fast_env(work, url, args.redis_url, model_dir, LEASE_S="30", HEARTBEAT_S="5", RELAY_INTERVAL_S="1",
                       RELAY_DELAY_S="2", REPUBLISH_AFTER_S="600", LOG_LEVEL="WARNING")
        run_cli(["models", "make-tiny", str(model_dir)], env, work, timeout=300)
        ledger = Ledger(url, work / "storage")
        results = []
        with processes(env, work, work / "logs") as procs:
            stack = Stack(procs, env, work).start(workers=0)
            keys = [stack.headers["Authorization"].removeprefix("Bearer ")]
            for _ in range(args.tenants - 1):
                out = run_cli(["keys", "create", "--name", f"bench-{uuid.uuid4().hex[:6]}"], env, work).stdout
                keys.append(out.strip().splitlines()[-1])
            for name in phases:
                if name == "bare":
                    results.append(bare_phase(procs, env, work, keys, args))
                else:
                    results.append(phase(name, stack, ledger, keys, args, workers_before=name == "running"))
        ledger.close()
    load_after = os.getloadavg()
    bare = next((row for row in results if row["phase"] == "bare"), None)
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); {os.cpu_count()} CPUs")
    print("| phase | jobs | p50 ms | p99 ms | mean ms | submits/s | submits/s vs bare | lost | duplicated |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in results:
        ratio = f"{row['submits_per_s'] / bare['submits_per_s']:.2f}x" if bare else ""
        print(f"| {row['phase']} | {row['jobs']} | {row['p50_ms']} | {row['p99_ms']} | {row['mean_ms']} "
              f"| {row['submits_per_s']} | {ratio} | {row['lost']} | {row['duplicated']} |")
    print(json.dumps({"load_before": load_before, "load_after": load_after, "rows": results}))


if __name__ == "__main__":
    main()
