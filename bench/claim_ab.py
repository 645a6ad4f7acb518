"""The claim before and after a change, side by side: this tree's ``shared.jobs.started`` against the one at a git
ref, alternating job by job on one fresh PostgreSQL database (a benchmark, not a test).

    .venv/bin/python -m bench.claim_ab [--ref 62f57e8] [--claims 600]

Reports, per version, the median time from opening the claim's transaction to its first statement reaching the
driver (``before_cursor_execute``: building and compiling the statement) and of the whole transaction (claim, read,
audit row, commit), as the worker runs it (``worker.generation.JOB_COLUMNS``).
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
from pathlib import Path
from typing import Any

from sqlalchemy import event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.generation import add_jobs, database  # noqa: E402
from shared import jobs  # noqa: E402
from shared.db import Database  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
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
        db.engine.dispose()
    print(f"load average {os.getloadavg()[0]:.2f} (1 min); {args.claims // 2} claims each, alternating; medians in ms")
    print("| version | to first statement | whole claim transaction |")
    print("|---|---|---|")
    for name, (to_first, whole) in results.items():
        to_first_ms, whole_ms = statistics.median(to_first[10:]) * 1000, statistics.median(whole[10:]) * 1000
        print(f"| {name} | {to_first_ms:.2f} | {whole_ms:.2f} |")


if __name__ == "__main__":
    main()
