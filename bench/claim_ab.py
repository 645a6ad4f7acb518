"""The claim before and after a change, side by side: this tree's ``shared.jobs.started`` against the one at a git
ref, alternating job by job on one fresh PostgreSQL database (a benchmark, not a test).

    .venv/bin/python -m bench.claim_ab [--ref 62f57e8] [--claims 600]

Reports, per version, the median time from opening the claim's transaction to its first statement reaching the
driver (``before_cursor_execute``: building and compiling the statement) and of the whole transaction (claim, read,
audit row, commit), as the worker runs it (``worker.generation.JOB_COLUMNS``). Then the INSERT styles of the finish,
alternating in one transaction (rolled back): an audit row through the ORM-enabled ``insert(JobTransition)`` and
through a Core ``insert(table)``; a metrics row as ``insert(table).values(**row)`` built per call and as one
prebuilt INSERT with the row as parameters.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from sqlalchemy import event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import Table, insert  # noqa: E402

from bench.generation import add_jobs, database  # noqa: E402
from shared import jobs  # noqa: E402
from shared.db import Database  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
from shared.models import GenerationMetric, JobTransition  # noqa: E402
from shared.settings import Settings  # noqa: E402


def old_module(ref: str, folder: Path) -> Any:
    source = subprocess.run(["git", "show", f"{ref}:shared/jobs.py"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    path = folder / "jobs_at_ref.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("jobs_at_ref", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["jobs_at_ref"] = module
    spec.loader.exec_module(module)
    return module


METRIC = {"job_id": "j", "client_id": "c", "user_id": "u", "attempt": 1, "outcome": "succeeded", "error_code": None,
          "queue": "q", "queue_wait_s": 0.1, "load_s": 0.1, "inference_s": 0.1, "store_s": 0.1, "total_s": 0.1,
          "steps": 2, "width": 64, "height": 64, "num_images": 1, "profile": "tiny", "revision": "r",
          "identity_refs": 0, "style_ref": False, "embeddings_cached": 0, "lora": None, "lora_resident": None,
          "worker": "w", "gpu": None, "device": "cpu", "model_load_s": 1.0, "peak_gpu_memory_bytes": None,
          "variant": "a"}


def insert_styles(db: Database, job_id: str, rounds: int = 300) -> dict[str, list[float]]:
    transitions, metrics = cast(Table, JobTransition.__table__), cast(Table, GenerationMetric.__table__)
    prebuilt = insert(metrics)
    row = {"job_id": job_id, "attempt": 1, "from_status": "queued", "to_status": "running", "reason": None,
           "worker": "w"}
    styles: dict[str, Callable[[Any], Any]] = {
        "audit row, ORM-enabled insert(JobTransition)": lambda s: s.execute(insert(JobTransition), [row]),
        "audit row, Core insert(table)": lambda s: s.execute(insert(transitions), [row]),
        "metrics row, insert(table).values(**row) per call": lambda s: s.execute(insert(metrics).values(**METRIC)),
        "metrics row, prebuilt INSERT, row as parameters": lambda s: s.execute(prebuilt, METRIC),
    }
    seconds: dict[str, list[float]] = {name: [] for name in styles}
    with db.begin() as session:
        for _ in range(rounds):
            for name, run in styles.items():
                started = time.perf_counter()
                run(session)
                seconds[name].append(time.perf_counter() - started)
        session.rollback()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref", default="62f57e8", help="the git ref of the version to compare with")
    parser.add_argument("--claims", type=int, default=600)
    parser.add_argument("--database-admin-url", default=os.environ.get(
        "TEST_DATABASE_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    from worker.generation import JOB_COLUMNS

    with tempfile.TemporaryDirectory() as scratch, database(args.database_admin_url) as url:
        old = old_module(args.ref, Path(scratch))
        upgrade(Settings(database_url=url))
        db = Database(Settings(database_url=url))
        ids = add_jobs(db, {"subject_id": "b", "version": 1, "storage_key": "x", "sha256": "y"}, args.claims)
        first: list[float] = []

        @event.listens_for(db.engine, "before_cursor_execute")
        def sent(*_: Any) -> None:
            if not first:
                first.append(time.perf_counter())

        results: dict[str, tuple[list[float], list[float]]] = {"this tree": ([], []), args.ref: ([], [])}
        for index, job_id in enumerate(ids):
            name, module = ("this tree", jobs) if index % 2 == 0 else (args.ref, old)
            first.clear()
            started = time.perf_counter()
            with db.begin() as session:
                assert isinstance(module.started(session, job_id, "bench", 60, read=JOB_COLUMNS), module.Claim)
            results[name][1].append(time.perf_counter() - started)
            results[name][0].append(first[0] - started)
        inserts = insert_styles(db, ids[0])
        db.engine.dispose()
    print(f"load average {os.getloadavg()[0]:.2f} (1 min); {args.claims // 2} claims each, alternating; medians in ms")
    print("| version | to first statement | whole claim transaction |")
    print("|---|---|---|")
    for name, (to_first, whole) in results.items():
        to_first_ms, whole_ms = statistics.median(to_first[10:]) * 1000, statistics.median(whole[10:]) * 1000
        print(f"| {name} | {to_first_ms:.2f} | {whole_ms:.2f} |")
    print("\n| INSERT | ms (median) |\n|---|---|")
    for name, seconds in inserts.items():
        print(f"| {name} | {statistics.median(seconds[20:]) * 1000:.3f} |")


if __name__ == "__main__":
    main()
