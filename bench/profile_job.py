"""Where a tiny job's time goes outside the pipeline: SQL round trips, PNG encoding, bytes copied on upload.

    .venv/bin/python -m bench.profile_job [--jobs 30] [--s3] [--profile profile.txt]

Runs ``worker.generation.run_generation`` (what a GPU worker runs per job) on the tiny model, 64x64, 4 steps, one
subject reference, against a fresh PostgreSQL database (``bench.generation.database``) and a local store, and reports:

1. **Round trips per job**, counted with SQLAlchemy events on the worker's engine: each SQL statement, each
   ``BEGIN`` (psycopg2 sends it before a transaction's first statement), each ``COMMIT``, and each pool checkout
   (``pool_pre_ping`` sends a ping then). The statements of one job are listed in order.
2. **PNG encode level**: size and time of ``compress_level`` 0-9 for a 1024x1024 picture with smooth areas,
   edges and grain (a stand-in for an SDXL image; random noise would not compress at any level).
3. **Copies on upload**: peak bytes Python allocates (``tracemalloc``) while ``_store`` encodes, hashes and writes one
   1024x1024 image, as a multiple of the PNG's size (local folder; with ``--s3`` also ``rclone serve s3``).
4. With ``--profile FILE``: a pyinstrument profile of the jobs (``pip install pyinstrument``, in the dev extra).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFilter
from sqlalchemy import event

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.generation import add_jobs, database
from shared.migrate import upgrade
from shared.settings import Settings


class RoundTrips:
    """Counts what the worker's engine sends to PostgreSQL (statements, BEGIN, COMMIT, pre-ping checkouts)."""

    def __init__(self, engine: Any) -> None:
        self.first_statement: float | None = None  # perf_counter when the job's first statement was sent
        self.statements: list[str] = []
        self.kinds: Counter[str] = Counter()
        self.engine = engine
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "commit", self._commit)
        event.listen(engine.pool, "checkout", self._checkout)

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._statement)
        event.remove(self.engine, "begin", self._begin)
        event.remove(self.engine, "commit", self._commit)
        event.remove(self.engine.pool, "checkout", self._checkout)

    def _statement(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if self.first_statement is None:
            self.first_statement = time.perf_counter()
        words = statement.split()
        head = " ".join(words[:3]) if words[0] in ("INSERT", "UPDATE", "DELETE") else " ".join(words[:2])
        self.statements.append(head[:60])
        self.kinds["statement"] += 1

    def _begin(self, conn: Any) -> None:
        self.statements.append("BEGIN")
        self.kinds["begin"] += 1

    def _commit(self, conn: Any) -> None:
        self.statements.append("COMMIT")
        self.kinds["commit"] += 1

    def _checkout(self, *_: Any) -> None:
        self.statements.append("(checkout: pre-ping)")
        self.kinds["checkout"] += 1

    def reset(self) -> None:
        self.first_statement = None
        self.statements.clear()
        self.kinds.clear()


def picture(size: int = 1024) -> Image.Image:
    """Smooth gradients, shapes with edges, a little blur and grain: compresses like a generated picture."""
    gradient = Image.linear_gradient("L").resize((size, size))
    image = Image.merge("RGB", (gradient, gradient.rotate(90), gradient.rotate(180)))
    draw = ImageDraw.Draw(image)
    for i in range(40):
        x, y, r = (i * 97) % size, (i * 193) % size, 20 + (i * 37) % 120
        draw.ellipse((x - r, y - r, x + r, y + r), fill=((i * 50) % 256, (i * 90) % 256, (i * 140) % 256))
    image = image.filter(ImageFilter.GaussianBlur(3))
    grain = Image.effect_noise((size, size), 12).convert("RGB")
    return Image.blend(image, grain, 0.08)


def png_levels(image: Image.Image, repeats: int = 3) -> list[tuple[int, int, float]]:
    rows = []
    for level in range(10):
        times, size = [], 0
        for _ in range(repeats):
            buffer = io.BytesIO()
            started = time.perf_counter()
            image.save(buffer, format="PNG", compress_level=level)
            times.append(time.perf_counter() - started)
            size = buffer.tell()
        rows.append((level, size, statistics.median(times)))
    return rows


def copies(runtime: Any, image: Image.Image) -> tuple[int, int]:
    """(PNG size, peak bytes allocated by ``_store``) for one image."""
    from shared import jobs
    from shared.stored_request import StoredRequest
    from worker.attempt import JobInput
    from worker.generation import _store

    stored = StoredRequest.model_validate({"prompt": "x", "params": {
        "width": image.width, "height": image.height, "steps": 1, "guidance_scale": 0.0, "num_images": 1,
        "identity_scale": 0.0, "style_scale": 0.0, "content_scale": 0.0, "output_format": "png"}})
    job = JobInput(stored=stored, seed=0, prompt_used="x", created_at=None,  # type: ignore[arg-type]
                   started_at=None, client_id="c", user_id="u", queue="q")  # type: ignore[arg-type]
    claim = jobs.Claim("bench-copies", 1)
    _store(runtime, claim, job, [image])  # warm (imports, folders)
    tracemalloc.start()
    tracemalloc.reset_peak()
    stored = _store(runtime, claim, job, [image])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    runtime.storage.delete_prefix("jobs/bench-copies/")
    return stored[0].size_bytes, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--s3", action="store_true")
    parser.add_argument("--profile", type=Path, default=None, help="write a pyinstrument text profile here")
    parser.add_argument("--database-admin-url", default=os.environ.get(
        "TEST_DATABASE_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from worker.generation import run_generation
    from worker.pipeline.tiny import make_tiny
    from worker.runtime import Runtime

    print(f"load average {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch, database(args.database_admin_url) as url:
        root = Path(scratch)
        model_dir = make_tiny(root / "tiny")
        upgrade(Settings(database_url=url))
        settings = Settings(var_dir=root / "var", database_url=url, storage_url=str(root / "storage"))
        runtime = Runtime(settings.model_copy(update={"model_dir": model_dir, "torch_threads": 1}))
        runtime.engine()
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 150, 120)).save(buffer, format="PNG")
        runtime.storage.put("subjects/bench/v1.png", buffer.getvalue(), "image/png")
        reference = {"subject_id": "bench", "version": 1, "storage_key": "subjects/bench/v1.png",
                     "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}
        ids = add_jobs(runtime.db, reference, args.jobs + 2)
        for job_id in ids[:2]:  # warm-up: embedding cache, connections
            run_generation(job_id, runtime)

        # 1. Round trips per job
        trips = RoundTrips(runtime.db.engine)
        per_job: list[Counter[str]] = []
        listing: list[str] = []
        profiler = None
        if args.profile:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.0005)
            profiler.start()
        to_claim: list[float] = []
        for job_id in ids[2:]:
            trips.reset()
            called = time.perf_counter()
            assert run_generation(job_id, runtime) == "succeeded"
            to_claim.append((trips.first_statement or called) - called)
            per_job.append(Counter(trips.kinds))
            listing = list(trips.statements)
        if profiler is not None:
            profiler.stop()
            args.profile.write_text(profiler.output_text(unicode=True, color=False, show_all=True))
        trips.close()
        print(f"\nSQL per job (median of {len(per_job)} jobs; heartbeats depend on the job's length):")
        print("| statements | BEGIN | COMMIT | checkouts (pre-ping) | round trips |")
        print("|---|---|---|---|---|")
        med = {k: statistics.median(c[k] for c in per_job) for k in ("statement", "begin", "commit", "checkout")}
        print(f"| {med['statement']:g} | {med['begin']:g} | {med['commit']:g} | {med['checkout']:g} "
              f"| {sum(med.values()):g} |")
        print(f"\nrun_generation called → claim statement sent: {statistics.median(to_claim) * 1000:.2f} ms (median; "
              "the pool checkout with its pre-ping and psycopg2's BEGIN)")
        print("\nThe last job's round trips, in order:")
        for line in listing:
            print(f"    {line}")

        # 2. PNG encode level
        image = picture()
        print("\nPNG compress_level, 1024x1024 (median of 3):")
        print("| level | KiB | ms |")
        print("|---|---|---|")
        for level, size, seconds in png_levels(image):
            print(f"| {level} | {size / 1024:.0f} | {seconds * 1000:.1f} |")

        # 3. Copies on upload
        print("\nBytes allocated while storing one 1024x1024 PNG (tracemalloc peak / PNG size):")
        size, peak = copies(runtime, image)
        print(f"| local folder | PNG {size / 1024:.0f} KiB | peak {peak / 1024:.0f} KiB | {peak / size:.2f}x |")
        runtime.db.engine.dispose()
        if args.s3:
            from tests.s3server import S3Server

            with S3Server(root / "s3", buckets=("bench",)) as server:
                s3 = settings.model_copy(update={
                    "storage_url": "s3://bench/run", "s3_endpoint_url": server.endpoint, "model_dir": model_dir,
                    "s3_access_key_id": server.access_key, "s3_secret_access_key": server.secret_key})
                s3_runtime = Runtime(s3)
                size, peak = copies(s3_runtime, image)
                print(f"| S3 (loopback) | PNG {size / 1024:.0f} KiB | peak {peak / 1024:.0f} KiB "
                      f"| {peak / size:.2f}x |")
                s3_runtime.db.engine.dispose()


if __name__ == "__main__":
    main()
