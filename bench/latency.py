"""Submit→start latency on an empty queue, and our time outside the pipeline, against a bare Celery round trip.

    .venv/bin/python bench/latency.py [--jobs 200] [--redis-url redis://127.0.0.1:6379/14]

Starts the real stack with the project's CLI (the API under gunicorn, one generation worker on the ``tiny`` CPU
model, a maintenance worker and beat) on a fresh PostgreSQL database and an emptied Redis db, and next to it a bare
Celery worker on the same Redis (``bench.bare``: Celery's defaults, one trivial task that returns when it started;
prefork, concurrency 1, the flags our workers use). Then, one at a time and interleaved so both see the same machine:

- **bare**: ``apply_async`` of the trivial task; latency = the task's start time - the time before publishing;
- **job**: ``POST /v1/illustrations`` of a tiny job (64x64, 2 steps), then ``GET`` with ``Prefer: wait`` until it
  ends; submit→start = the job's ``started_at`` (set by the worker's claim, the database clock on this host) - the
  time before the POST. The queue is empty each time: the next job is sent when the previous one ended.

Also reported per job: created→start (row committed → claimed), the worker's time outside the pipeline call
(``finished_at - started_at - inference_s``, the metrics row's diffusers call) and end to end outside the pipeline
(``finished_at - POST - inference_s``). p50/p99 in ms over ``--jobs`` jobs after 5 warm-up pairs; ratio = ours /
bare, measured in the same run. The load average is printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scratch import scratch  # noqa: E402
from tests.system.faults import TINY_JOB, Stack, fast_env  # noqa: E402
from tests.system.procs import Proc, processes, run_cli, wait_for  # noqa: E402

WARMUP = 5
TERMINAL = {"succeeded", "failed", "canceled"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def bare_round_trip(task: Any, queue: str) -> float:
    sent = time.time()
    began = float(task.apply_async(queue=queue).get(timeout=30))
    return began - sent


def job_round_trip(session: requests.Session, base: str, headers: dict[str, str]) -> tuple[str, float, float]:
    """(job id, time before the POST, time its answer arrived)."""
    sent = time.time()
    response = session.post(f"{base}/v1/illustrations", json=TINY_JOB, headers=headers, timeout=30)
    answered = time.time()
    if response.status_code != 202:
        raise RuntimeError(f"submit answered {response.status_code}: {response.text[:200]}")
    job_id = response.json()["id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = session.get(f"{base}/v1/illustrations/{job_id}", headers={**headers, "Prefer": "wait=20"},
                           timeout=30).json()
        if body["status"] in TERMINAL:
            if body["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} ended {body['status']}")
            return job_id, sent, answered
    raise RuntimeError(f"job {job_id} did not finish within 60 s")


def job_rows(url: str, ids: list[str]) -> dict[str, Any]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT j.id, extract(epoch FROM j.created_at) AS created, extract(epoch FROM j.started_at) AS started,"
            " extract(epoch FROM j.finished_at) AS finished, extract(epoch FROM j.published_at) AS published,"
            " m.inference_s FROM jobs j JOIN generation_metrics m"
            " ON m.job_id = j.id AND m.outcome = 'succeeded' WHERE j.id = ANY(:ids)"), {"ids": ids}).all()
    engine.dispose()
    return {row.id: row for row in rows}


def summary(name: str, values_s: list[float]) -> dict[str, Any]:
    ms = [v * 1000 for v in values_s]
    return {"measure": name, "n": len(ms), "p50_ms": round(percentile(ms, 50), 1),
            "p99_ms": round(percentile(ms, 99), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--admin-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="an emptied Redis db")
    args = parser.parse_args()

    load_before = os.getloadavg()
    bare_s: list[float] = []
    project_s: list[float] = []
    sent_at: dict[str, float] = {}
    answered_at: dict[str, float] = {}
    with scratch(args.admin_url, args.redis_url, "illustrations-latency-") as (work, url):
        model_dir = work / "models" / "tiny"
        env = fast_env(work, url, args.redis_url, model_dir, LEASE_S="30", HEARTBEAT_S="5", RELAY_INTERVAL_S="1",
                       RELAY_DELAY_S="2", REPUBLISH_AFTER_S="600", LOG_LEVEL="WARNING")
        run_cli(["models", "make-tiny", str(model_dir)], env, work, timeout=300)
        os.environ["BENCH_BARE_BROKER_URL"] = args.redis_url
        from bench.bare import started

        with processes(env, work, work / "logs") as procs:
            stack = Stack(procs, env, work).start(workers=1)
            bare_env = {**env, "BENCH_BARE_BROKER_URL": args.redis_url, "PYTHONPATH": str(ROOT)}
            for name, queue, extra in (("bare", "bench.bare", {}),
                                       ("project", "bench.bare.project", {"BENCH_BARE_CONFIG": "project"})):
                procs.started.append(Proc(f"celery-{name}", [
                    sys.executable, "-m", "celery", "-A", "bench.bare", "worker", "-Q", queue, "--concurrency", "1",
                    "--pool", "prefork", "--loglevel", "WARNING", "--without-mingle", "--without-gossip",
                    "--hostname", f"{name}@bench"], {**bare_env, **extra}, ROOT, work / "logs"))
            with requests.Session() as session:
                wait_for(lambda: _ready(session, stack), 180, "the first job (model load)", interval_s=0.5)
                for index in range(WARMUP + args.jobs):
                    latency = bare_round_trip(started, "bench.bare")
                    project = bare_round_trip(started, "bench.bare.project")
                    job_id, sent, answered = job_round_trip(session, stack.base, stack.headers)
                    if index >= WARMUP:
                        bare_s.append(latency)
                        project_s.append(project)
                        sent_at[job_id] = sent
                        answered_at[job_id] = answered
        rows = job_rows(url, list(sent_at))
    load_after = os.getloadavg()

    submit_start = [float(rows[j].started) - sent for j, sent in sent_at.items()]
    results = [
        summary("bare Celery: publish → task start", bare_s),
        summary("job: submit → start (POST → claimed)", submit_start),
        summary("bare task, the project's Celery settings: publish → start", project_s),
        summary("job: POST answered (client)", [answered_at[j] - sent for j, sent in sent_at.items()]),
        summary("job: POST answered → claimed", [float(rows[j].started) - answered_at[j] for j in sent_at]),
        summary("job: outbox mark (published_at) → claimed",
                [float(r.started) - float(r.published) for r in rows.values() if r.published is not None]),
        summary("job: created → start (row committed → claimed)",
                [float(r.started) - float(r.created) for r in rows.values()]),
        summary("job: worker time outside the pipeline call",
                [float(r.finished) - float(r.started) - float(r.inference_s) for r in rows.values()]),
        summary("job: end to end outside the pipeline call",
                [float(rows[j].finished) - sent - float(rows[j].inference_s) for j, sent in sent_at.items()]),
        summary("job: pipeline call (tiny, 64x64, 2 steps)", [float(r.inference_s) for r in rows.values()]),
    ]
    bare = results[0]
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); {os.cpu_count()} CPUs")
    print("| measure | n | p50 ms | p99 ms | p50 vs bare | p99 vs bare |")
    print("|---|---|---|---|---|---|")
    for index, row in enumerate(results):
        ratio = index < 3  # bare, ours, and bare with our Celery settings
        p50 = f"{row['p50_ms'] / bare['p50_ms']:.2f}x" if ratio else ""
        p99 = f"{row['p99_ms'] / bare['p99_ms']:.2f}x" if ratio else ""
        print(f"| {row['measure']} | {row['n']} | {row['p50_ms']} | {row['p99_ms']} | {p50} | {p99} |")
    print(json.dumps({"load_before": load_before, "load_after": load_after, "rows": results}))


def _ready(session: requests.Session, stack: Stack) -> bool:
    """One job went through (the worker loaded its model)."""
    try:
        job_round_trip(session, stack.base, stack.headers)
    except (RuntimeError, requests.RequestException):
        return False
    return True


if __name__ == "__main__":
    main()
