"""Webhooks: what recording an event adds to a job's finish, and how fast one CPU thread delivers (a benchmark).

On a fresh PostgreSQL database on 127.0.0.1:

- ``finish``: the terminal transaction a GPU worker runs (``jobs.succeeded``: the fenced UPDATE, the audit row, the
  ``finished`` seam, the commit), timed per job, for jobs whose client has a default webhook URL (the seam's
  INSERT … SELECT writes an event) and jobs without any URL (it writes nothing), interleaved. Medians and p95 in ms.
- ``deliver``: ``worker.webhooks.deliver`` one event after another (render and freeze the body, sign, POST through
  the safe fetcher to a receiver on loopback answering 200, log the attempt) on one thread: events/s and the
  median POST latency the attempts logged.

    .venv/bin/python -m bench.webhooks [--jobs 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
from cryptography.fernet import Fernet

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import shared.cache  # noqa: F401  (as in a worker process: the result cache's on-finished hook)
from shared import jobs
from shared.db import Database
from shared.fetch import Fetcher
from shared.migrate import upgrade
from shared.models import Client, WebhookAttempt
from shared.settings import Settings
from tests.conftest import ADMIN_URL, _admin_engine, _drop
from tests.webhook_receiver import Receiver
from worker.webhooks import deliver


def new_job(db: Database, client_id: str) -> jobs.Claim:
    with db.begin() as session:
        job = jobs.new_job(client_id=client_id, user_id="u-bench", priority="interactive",
                           queue="illustrations.interactive", request={"prompt": "p", "params": {"steps": 2}}, seed=1)
        session.add(job)
        session.flush()
        job_id = job.id
    with db.begin() as session:
        claim = jobs.started(session, job_id, "bench", 60)
    assert isinstance(claim, jobs.Claim)
    return claim


def finish(db: Database, claim: jobs.Claim) -> float:
    started = time.perf_counter()
    with db.begin() as session:
        jobs.succeeded(session, claim, [], timings={"queued_s": 0.0, "inference_s": 0.1, "total_s": 0.1})
    return (time.perf_counter() - started) * 1000


def p95(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.95) - 1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=300)
    args = parser.parse_args()
    name = f"illustrations_bench_{uuid.uuid4().hex[:8]}"
    admin = _admin_engine()
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        with Receiver([200]) as receiver:
            settings = Settings(database_url=url, var_dir=Path(tempfile.mkdtemp()), fetch_allowlist=["127.0.0.1"],
                                webhook_secret_keys=[Fernet.generate_key().decode()])
            upgrade(settings)
            db = Database(settings)
            with db.begin() as session:
                hooked = Client(name="hooked", webhook_url=receiver.url())
                quiet = Client(name="quiet")
                session.add_all([hooked, quiet])
                session.flush()
                hooked_id, quiet_id = hooked.id, quiet.id
            with_hook: list[float] = []
            without: list[float] = []
            for _ in range(args.jobs):
                with_hook.append(finish(db, new_job(db, hooked_id)))
                without.append(finish(db, new_job(db, quiet_id)))
            with db.begin() as session:
                ids = list(session.execute(sa.text("SELECT id FROM webhook_events")).scalars())
            fetcher = Fetcher(allowlist=["127.0.0.1"], timeout_s=settings.webhook_timeout_s)
            started = time.perf_counter()
            states = [deliver(db, settings, fetcher, event_id) for event_id in ids]
            elapsed = time.perf_counter() - started
            with db.begin() as session:
                latencies = list(session.execute(sa.select(WebhookAttempt.latency_ms)).scalars())
            db.engine.dispose()
        print(json.dumps({
            "jobs_per_arm": args.jobs,
            "finish_ms_with_webhook": {"p50": round(statistics.median(with_hook), 2), "p95": round(p95(with_hook), 2)},
            "finish_ms_without": {"p50": round(statistics.median(without), 2), "p95": round(p95(without), 2)},
            "delivered": states.count("delivered"), "events": len(ids),
            "deliveries_per_s_one_thread": round(len(ids) / elapsed, 1),
            "post_latency_ms_p50": round(statistics.median(v for v in latencies if v is not None), 2),
        }))
    finally:
        with admin.connect() as connection:
            _drop(connection, name)
        admin.dispose()


if __name__ == "__main__":
    main()
