"""Result cache hits over HTTP: ``POST /v1/illustrations`` with ``Prefer: wait`` answered from stored images.

Starts its own stack with the project's CLI (the API under gunicorn, 2 processes x 8 threads, and one generation
worker with the ``tiny`` model) on a fresh PostgreSQL database and an emptied Redis db. One seeded job runs on the
worker (the source); the worker is then stopped, so every later answer comes from the cache or not at all. Then,
from one HTTP client (sequential requests, one keep-alive connection), side by side in one run:

- ``hit``: the identical request with ``Prefer: wait=10`` (each must be 200, ``succeeded``, ``cached``);
- ``miss``: the same request without a seed (never cached: written, queued and published; 202);
- ``read``: ``GET /v1/illustrations/{id}`` of the source job (the floor: auth, one read, the JSON).

p50/p99/mean in ms over ``--requests`` requests each, after ``--warmup`` untimed ones, interleaved round robin so
that load changes on a shared machine hit every kind alike.

    .venv/bin/python -m bench.cache [--requests 200] [--redis-url redis://127.0.0.1:6379/15]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.scratch import scratch
from tests.system.faults import Stack, fast_env
from tests.system.procs import processes, run_cli

SEEDED = {"user_id": "u-bench", "prompt": "a lighthouse at dusk",
          "params": {"width": 64, "height": 64, "steps": 2, "seed": 1234}}
UNSEEDED = {"user_id": "u-bench", "prompt": "a lighthouse at dusk", "params": {"width": 64, "height": 64, "steps": 2}}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(name: str, latencies: list[float]) -> dict[str, Any]:
    return {"kind": name, "requests": len(latencies), "p50_ms": round(percentile(latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 99) * 1000, 2),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 2)}


def measure(base: str, headers: dict[str, str], source_id: str, requests_each: int,
            warmup: int) -> list[dict[str, Any]]:
    timings: dict[str, list[float]] = {"hit": [], "miss": [], "read": []}
    with requests.Session() as http:
        def hit() -> None:
            response = http.post(f"{base}/v1/illustrations", json=SEEDED, headers={**headers, "Prefer": "wait=10"},
                                 timeout=30)
            body = response.json()
            if response.status_code != 200 or body["status"] != "succeeded" or not body["cached"]:
                raise RuntimeError(f"not a cache hit: {response.status_code} {body.get('status')}")

        def miss() -> None:
            response = http.post(f"{base}/v1/illustrations", json=UNSEEDED, headers=headers, timeout=30)
            if response.status_code != 202 or response.json()["cached"]:
                raise RuntimeError(f"a seedless submit answered {response.status_code}")

        def read() -> None:
            response = http.get(f"{base}/v1/illustrations/{source_id}", headers=headers, timeout=30)
            if response.status_code != 200:
                raise RuntimeError(f"read answered {response.status_code}")

        kinds = {"hit": hit, "miss": miss, "read": read}
        for _ in range(warmup):
            for call in kinds.values():
                call()
        for _ in range(requests_each):
            for name, call in kinds.items():
                started = time.perf_counter()
                call()
                timings[name].append(time.perf_counter() - started)
    return [summary(name, values) for name, values in timings.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="timed requests of each kind")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--admin-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/15", help="an emptied Redis db")
    args = parser.parse_args()

    load_before = os.getloadavg()
    with scratch(args.admin_url, args.redis_url, "illustrations-bench-cache-") as (work, url):
        model_dir = work / "models" / "tiny"
        env = fast_env(work, url, args.redis_url, model_dir, LOG_LEVEL="WARNING", RATE_LIMIT="",
                       MAX_QUEUED_JOBS_PER_CLIENT="0")
        run_cli(["models", "make-tiny", str(model_dir)], env, work, timeout=300)
        with processes(env, work, work / "logs") as procs:
            stack = Stack(procs, env, work).start(beat=False, workers=1)
            source = requests.post(f"{stack.base}/v1/illustrations", json=SEEDED,
                                   headers={**stack.headers, "Prefer": "wait=60"}, timeout=90).json()
            if source["status"] != "succeeded" or source["cached"]:
                raise RuntimeError(f"the source job did not run: {source['status']}")
            for worker in list(stack.workers.values()):
                worker.stop()  # from here on nothing can run on a "GPU"
            results = measure(stack.base, stack.headers, source["id"], args.requests, args.warmup)
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min)")
    print("| kind | requests | p50 ms | p99 ms | mean ms |")
    print("|---|---|---|---|---|")
    for row in results:
        print(f"| {row['kind']} | {row['requests']} | {row['p50_ms']} | {row['p99_ms']} | {row['mean_ms']} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
