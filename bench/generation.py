"""How much of a generation job is spent outside the pipeline call: claim, read references, store, finish.

    .venv/bin/python -m bench.generation [--jobs 50] [--s3] [--database-admin-url URL]

Runs ``worker.generation.run_generation`` (the code a GPU worker runs per job) on the tiny model, 4 steps at 64x64
with one subject reference, against a fresh PostgreSQL database of its own and a local store (and, with ``--s3``,
an S3 server: ``rclone serve s3`` on loopback). Each job's wall time is split into the pipeline call (the
``inference_s`` its metrics row records) and everything else; the report gives the share of everything else.
Jobs are created before timing starts; three warm-up jobs are not counted. One torch thread, as in the tests.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from PIL import Image
from sqlalchemy import select

import shared.cache  # noqa: F401  (as in a worker process: the result cache's on-finished hook)
from shared import jobs
from shared.db import Database
from shared.migrate import upgrade
from shared.models import Client, GenerationMetric
from shared.settings import Settings

WARMUP = 3
REQUEST = {
    "prompt": "a quiet street in the rain",
    "negative_prompt": None,
    "params": {"width": 64, "height": 64, "steps": 4, "guidance_scale": 5.0, "num_images": 1,
               "identity_scale": 0.6, "style_scale": 0.8, "content_scale": 1.0, "output_format": "png"},
}


@dataclass
class Sample:
    total_s: float
    inference_s: float
    load_s: float
    store_s: float

    @property
    def outside_s(self) -> float:
        return self.total_s - self.inference_s


@contextmanager
def database(admin_url: str) -> Iterator[str]:
    name = f"illustrations_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                       "WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": name})
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def add_jobs(db: Database, reference: dict[str, object], count: int) -> list[str]:
    ids = []
    with db.begin() as session:
        client = Client(name=f"bench-{uuid.uuid4().hex[:8]}")
        session.add(client)
        session.flush()
        for seed in range(count):
            job = jobs.new_job(client_id=client.id, user_id="bench", priority="interactive",
                               queue="illustrations.interactive", seed=seed,
                               request={**REQUEST, "resolved": {"identity": [reference], "style": None}})
            session.add(job)
            session.flush()
            ids.append(job.id)
    return ids


def run(settings: Settings, model_dir: Path, count: int) -> list[Sample]:
    import hashlib

    from worker.generation import run_generation
    from worker.runtime import Runtime

    runtime = Runtime(settings.model_copy(update={"model_dir": model_dir, "torch_threads": 1}))
    runtime.engine()  # the warm pipeline, loaded once per worker process
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 150, 120)).save(buffer, format="PNG")
    runtime.storage.put("subjects/bench/v1.png", buffer.getvalue(), "image/png")
    reference = {"subject_id": "bench", "version": 1, "storage_key": "subjects/bench/v1.png",
                 "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}
    job_ids = add_jobs(runtime.db, reference, WARMUP + count)
    samples = []
    for index, job_id in enumerate(job_ids):
        started = time.perf_counter()
        outcome = run_generation(job_id, runtime)
        total = time.perf_counter() - started
        if outcome != "succeeded":
            raise SystemExit(f"job {index} ended {outcome}")
        if index < WARMUP:
            continue
        with runtime.db.begin() as session:
            row = session.execute(select(GenerationMetric).where(GenerationMetric.job_id == job_id)).scalar_one()
            samples.append(Sample(total, row.inference_s or 0.0, row.load_s or 0.0, row.store_s or 0.0))
    runtime.db.engine.dispose()
    return samples


def report(label: str, samples: list[Sample]) -> str:
    total = sum(s.total_s for s in samples)
    outside = sum(s.outside_s for s in samples)

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.1f}"

    return (f"| {label} | {len(samples)} | {ms([s.total_s for s in samples])} | {ms([s.inference_s for s in samples])}"
            f" | {ms([s.outside_s for s in samples])} | {ms([s.load_s for s in samples])}"
            f" | {ms([s.store_s for s in samples])} | {100 * outside / total:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--s3", action="store_true", help="also run against an S3 server (rclone serve s3)")
    parser.add_argument("--database-admin-url", default=os.environ.get(
        "TEST_DATABASE_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: no hub lookups

    from worker.pipeline.tiny import make_tiny

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch, database(args.database_admin_url) as url:
        root = Path(scratch)
        model_dir = make_tiny(root / "tiny")
        upgrade(Settings(database_url=url))
        local = Settings(var_dir=root / "var", database_url=url, storage_url=str(root / "storage"))
        rows.append(report("local folder", run(local, model_dir, args.jobs)))
        if args.s3:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
            from tests.s3server import S3Server

            with S3Server(root / "s3", buckets=("bench",)) as server:
                s3 = local.model_copy(update={
                    "storage_url": "s3://bench/run", "s3_endpoint_url": server.endpoint,
                    "s3_access_key_id": server.access_key, "s3_secret_access_key": server.secret_key})
                rows.append(report("S3 (rclone serve s3, loopback)", run(s3, model_dir, args.jobs)))
    print(f"{datetime.now(UTC):%Y-%m-%d}, {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, PostgreSQL on 127.0.0.1; medians in ms")
    print("| storage | jobs | job | pipeline call | outside the call | references + LoRA | store + finish |"
          " outside, share of all job time |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
