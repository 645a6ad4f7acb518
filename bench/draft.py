"""A draft against the final of the same request, through the real stack, side by side in one run.

    .venv/bin/python -m bench.draft [--pairs 20] [--size 128] [--redis-url redis://127.0.0.1:6379/13]

Starts the real stack with the project's CLI (the API under gunicorn, one generation worker on the ``tiny`` CPU
model with its draft LoRA, a maintenance worker and beat) on a fresh PostgreSQL database and an emptied Redis db.
Then, one pair at a time (the queue is empty each time), the same request (``--size`` square, one image, the API's
defaults otherwise: a final is 30 steps with guidance 7.5, a draft its variant's 4 steps without guidance) is sent
as ``quality: draft`` and then as ``final``, each with ``Prefer: wait=30``:

- **submit → answered**: the POST's round trip as the client sees it (200 with the finished job when it finished
  within the wait; the share answered inside the POST is reported);
- **inference**: the pipeline call (the metrics row's ``inference_s``);
- **worker total**: claim → finished (``total_s`` of the metrics row: references, pipeline, storing, finishing);
- **outside the pipeline**: in the worker (claim → finished minus the inference: references, LoRA and scheduler
  switch, PNG, storage, the finishing transaction), and end to end (submit → answered minus the inference: also the
  POST, the queue, the claim and the wake-up of the waiting POST), and the end-to-end share of submit → answered.

Each pair has its own prompt and seed, so neither is a cache hit. p50/p90 in ms over ``--pairs`` pairs after 3
warm-up pairs. The load average is printed with the table.
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
from tests.helpers import wait_for  # noqa: E402
from tests.system.faults import Stack, fast_env  # noqa: E402
from tests.system.procs import processes, run_cli  # noqa: E402

WARMUP = 3
WAIT_S = 30
QUALITIES = ("draft", "final")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def request(index: int, size: int, quality: str) -> dict[str, Any]:
    return {"user_id": "u-bench", "prompt": f"grandma's kitchen, morning light, take {index}",
            "params": {"width": size, "height": size, "seed": 1000 + index, "quality": quality}}


def submit(session: requests.Session, stack: Stack, body: dict[str, Any]) -> tuple[str, float, bool]:
    """(job id, seconds from before the POST to its answer, whether the answer was the finished job)."""
    sent = time.perf_counter()
    response = session.post(f"{stack.base}/v1/illustrations", json=body,
                            headers={**stack.headers, "Prefer": f"wait={WAIT_S}"}, timeout=WAIT_S + 30)
    answered = time.perf_counter() - sent
    if response.status_code not in (200, 202):
        raise RuntimeError(f"submit answered {response.status_code}: {response.text[:200]}")
    job = response.json()
    inside = response.status_code == 200 and job["status"] == "succeeded"
    if not inside:  # not finished within the wait: wait for it (it does not count as answered inside the POST)
        wait_for(lambda: session.get(f"{stack.base}/v1/illustrations/{job['id']}", headers=stack.headers,
                                     timeout=30).json()["status"] == "succeeded", 120, f"job {job['id']}")
    return job["id"], answered, inside


def metric_rows(url: str, ids: list[str]) -> dict[str, Any]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT job_id, inference_s, total_s, steps, quality FROM generation_metrics"
            " WHERE outcome = 'succeeded' AND job_id = ANY(:ids)"), {"ids": ids}).all()
    engine.dispose()
    return {row.job_id: row for row in rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--size", type=int, default=128, help="picture side (a multiple of 8)")
    parser.add_argument("--admin-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="an emptied Redis db")
    args = parser.parse_args()

    load_before = os.getloadavg()
    sent: dict[str, list[tuple[str, float, bool]]] = {quality: [] for quality in QUALITIES}
    with scratch(args.admin_url, args.redis_url, "illustrations-draft-") as (work, url):
        model_dir = work / "models" / "tiny"
        env = fast_env(work, url, args.redis_url, model_dir, LEASE_S="30", HEARTBEAT_S="5", RELAY_INTERVAL_S="1",
                       RELAY_DELAY_S="2", REPUBLISH_AFTER_S="600", LOG_LEVEL="WARNING")
        run_cli(["models", "make-tiny", str(model_dir)], env, work, timeout=300)
        with processes(env, work, work / "logs") as procs, requests.Session() as session:
            stack = Stack(procs, env, work).start(workers=1)
            for index in range(WARMUP + args.pairs):
                for quality in QUALITIES:
                    outcome = submit(session, stack, request(index, args.size, quality))
                    if index >= WARMUP:
                        sent[quality].append(outcome)
        rows = metric_rows(url, [job_id for outcomes in sent.values() for job_id, _, _ in outcomes])
    load_after = os.getloadavg()

    results: dict[str, dict[str, Any]] = {}
    for quality, outcomes in sent.items():
        answered = [seconds for _, seconds, _ in outcomes]
        inference = [float(rows[job_id].inference_s) for job_id, _, _ in outcomes]
        total = [float(rows[job_id].total_s) for job_id, _, _ in outcomes]
        outside = [a - i for a, i in zip(answered, inference, strict=True)]
        worker_outside = [t - i for t, i in zip(total, inference, strict=True)]
        share = [o / a for o, a in zip(outside, answered, strict=True)]
        assert {rows[job_id].quality for job_id, _, _ in outcomes} == {quality}
        results[quality] = {
            "steps": rows[outcomes[0][0]].steps,
            "inside_post": sum(inside for _, _, inside in outcomes) / len(outcomes),
            **{name: (round(percentile(values, 50) * 1000, 1), round(percentile(values, 90) * 1000, 1))
               for name, values in (("submit_answered_ms", answered), ("inference_ms", inference),
                                    ("worker_total_ms", total), ("worker_outside_ms", worker_outside),
                                    ("outside_pipeline_ms", outside))},
            "outside_share": (round(percentile(share, 50), 3), round(percentile(share, 90), 3)),
        }
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} (1 min); {os.cpu_count()} CPUs; "
          f"{args.pairs} pairs, {args.size}x{args.size}, tiny model on the CPU")
    print("| measure (p50 / p90) | draft | final |")
    print("|---|---|---|")
    draft, final = results["draft"], results["final"]
    print(f"| steps (UNet batch per step) | {draft['steps']} (1) | {final['steps']} (2: guidance) |")
    for name, label in (("submit_answered_ms", "submit → answered, ms (Prefer: wait)"),
                        ("inference_ms", "pipeline call, ms"), ("worker_total_ms", "worker: claim → finished, ms"),
                        ("worker_outside_ms", "worker, outside the pipeline call, ms"),
                        ("outside_pipeline_ms", "end to end, outside the pipeline call, ms")):
        print(f"| {label} | {draft[name][0]} / {draft[name][1]} | {final[name][0]} / {final[name][1]} |")
    print(f"| share of submit → answered outside the pipeline | {draft['outside_share'][0]:.0%} / "
          f"{draft['outside_share'][1]:.0%} | {final['outside_share'][0]:.0%} / {final['outside_share'][1]:.0%} |")
    print(f"| answered inside the POST | {draft['inside_post']:.0%} | {final['inside_post']:.0%} |")
    print(json.dumps({"load_before": load_before, "load_after": load_after, "results": results}))


if __name__ == "__main__":
    main()
