"""One submit (``POST /v1/illustrations``) in process: its time, its statements, and where the time goes.

    .venv/bin/python -m bench.submit [--submits 300] [--profile profile.txt] [--redis-url redis://127.0.0.1:6379/14]

The API app (``api.create_app``, the settings' defaults) on a fresh PostgreSQL database and a Redis db, driven by
Flask's test client: no HTTP server, no client process, so what is left is the API's own work (authentication,
validation, the transaction, the publish, the outbox mark). Each submit is a tiny job (64x64, 2 steps) of one
key; the response is closed as a WSGI server closes it after sending (the outbox mark runs then). 20 untimed
submits first; then ``--submits`` timed, p50/p90/mean in ms, this process's CPU time per submit (PostgreSQL's and
Redis's work is theirs; steadier than the wall clock when other work shares the machine), and the SQL statements
of one submit. ``--profile`` writes a pyinstrument profile (dev extra) of the timed submits. The messages are
deleted from Redis at the end.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
import sqlalchemy as sa
from sqlalchemy import event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.keys import create_key  # noqa: E402
from shared.migrate import upgrade  # noqa: E402
from shared.settings import Settings  # noqa: E402

BODY = {"user_id": "bench-user", "prompt": "a lighthouse at dusk", "params": {"width": 64, "height": 64, "steps": 2}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--submits", type=int, default=300)
    parser.add_argument("--profile", type=Path, help="write a pyinstrument profile of the timed submits here")
    parser.add_argument("--admin-url", default="postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="a Redis db the messages may go to")
    args = parser.parse_args()
    for name in [name for name in os.environ if name.startswith("ILLUSTRATIONS_")]:
        del os.environ[name]
    database = f"illustrations_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
    url = args.admin_url.rsplit("/", 1)[0] + f"/{database}"
    try:
        run(args, url)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                       " WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": database})
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}"'))
        admin.dispose()


def run(args: argparse.Namespace, url: str) -> None:
    from api import create_app

    upgrade(Settings(database_url=url))
    work = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    settings = Settings(var_dir=work / "var", database_url=url, broker_url=args.redis_url,
                        storage_url=str(work / "storage"), max_queued_jobs_per_client=1_000_000)
    app = create_app(settings)
    db = app.extensions["illustrations"].db
    with db.begin() as session:
        _, key = create_key(session, "bench-submit")
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}

    def submit() -> None:
        response = client.post("/v1/illustrations", json=BODY, headers=headers)
        response.close()  # as a WSGI server does once the answer is sent
        assert response.status_code == 202, response.data

    for _ in range(20):
        submit()
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(" ".join(statement.split())[:100])

    event.listen(db.engine, "before_cursor_execute", seen)
    submit()
    event.remove(db.engine, "before_cursor_execute", seen)
    profiler = None
    if args.profile is not None:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0002)
        profiler.start()
    times = []
    load_before = os.getloadavg()[0]
    cpu_began = time.process_time()
    for _ in range(args.submits):
        began = time.perf_counter()
        submit()
        times.append((time.perf_counter() - began) * 1000)
    cpu_ms = (time.process_time() - cpu_began) * 1000 / args.submits
    if profiler is not None:
        profiler.stop()
        args.profile.write_text(profiler.output_text(unicode=False, color=False))
    times.sort()
    print(f"load average (1 min) {load_before:.2f} -> {os.getloadavg()[0]:.2f}")
    print(f"{args.submits} submits in process: p50 {statistics.median(times):.2f} ms, "
          f"p90 {times[int(0.9 * len(times))]:.2f} ms, mean {statistics.mean(times):.2f} ms")
    print(f"CPU time of this process per submit: {cpu_ms:.2f} ms (the API's own work; steadier than the wall "
          "clock on a busy machine)")
    print(f"statements of one submit ({len(statements)}):")
    for statement in statements:
        print(f"  {statement}")
    app.extensions["illustrations"].waiter.close()
    db.engine.dispose()
    broker = redis.Redis.from_url(args.redis_url)
    for queue in ("illustrations.interactive",):
        broker.delete(queue)


if __name__ == "__main__":
    main()
