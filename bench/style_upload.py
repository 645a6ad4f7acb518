"""The API's time for style training uploads (``POST /v1/styles``, multipart) and a subject upload, before and after
the uploads stopped being decoded in the request: this tree against an exported earlier commit, side by side.

    .venv/bin/python -m bench.style_upload [--base 48e3beb] [--rounds 3] [--redis-url redis://127.0.0.1:6379/14]

Each tree runs in a child process of its own (the tree first on ``sys.path``), alternating base, new, base, new:
the API app (``api.create_app``) on a fresh PostgreSQL database, local storage and a Redis db, driven by Flask's
test client (no HTTP server), so the time is the API's own work. Per request: this process's CPU time (PostgreSQL's
work is its own; steadier than the wall clock on a shared machine) and the wall time; the median of ``--rounds``.

The bodies (captions "c0", "c1", ...):

- ``review``: the review's request, twenty 1-bit 5000x5000 PNGs (500 megapixels in about 62 KB);
- ``at-cap``: ten of them (250 megapixels, the most a training set may now have; accepted by both trees);
- ``photos``: eight 1024x768 JPEG photographs (noise, quality 85), what a real set looks like;
- ``subject``: one 1-bit 5000x5000 PNG as a subject photo (``POST /v1/subjects``: decoded in the request by both
  trees, as the contract's face box requires; the 25-megapixel limit bounds it).

For the new tree it also times the preparation step (``worker.style_preparation.prepare_style``, CPU worker) of
``at-cap`` and ``photos``: where the decoding went.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def bodies() -> dict[str, list[bytes]]:
    import numpy as np
    from PIL import Image

    def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    bilevel = encoded(Image.new("1", (5000, 5000)), "PNG")
    rng = np.random.default_rng(7)
    photos = [encoded(Image.fromarray(rng.integers(0, 256, (768, 1024, 3), dtype=np.uint8)), "JPEG", quality=85)
              for _ in range(8)]
    return {"review": [bilevel] * 20, "at-cap": [bilevel] * 10, "photos": photos, "subject": [bilevel]}


# --- The child: one tree, every body, --rounds times ----------------------------------------------------------------
def child(tree: Path, rounds: int, redis_url: str) -> dict[str, Any]:
    sys.path.insert(0, str(tree))
    import sqlalchemy as sa

    from api import create_app
    from api.keys import create_key
    from shared.migrate import upgrade
    from shared.settings import Settings

    database = f"illustrations_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    work = Path(tempfile.mkdtemp(prefix="bench-style-upload-"))
    results: dict[str, Any] = {}
    try:
        upgrade(Settings(database_url=url))
        settings = Settings(var_dir=work / "var", database_url=url, broker_url=redis_url,
                            storage_url=str(work / "storage"), rate_limit="")
        app = create_app(settings)
        svc = app.extensions["illustrations"]
        with svc.db.begin() as session:
            _, key = create_key(session, "bench-style-upload", ("generate", "styles"))
        client = app.test_client()
        headers = {"Authorization": f"Bearer {key}"}
        for name, pictures in bodies().items():
            cpu, wall, statuses, job_ids = [], [], [], []
            for round_ in range(rounds):
                if name == "subject":
                    data: dict[str, Any] = {"user_id": "u-bench", "name": f"s{round_}",
                                            "image": (io.BytesIO(pictures[0]), "0.png")}
                    path = "/v1/subjects"
                else:
                    data = {"name": f"{name}-{round_}", "caption": [f"c{i}" for i in range(len(pictures))],
                            "image": [(io.BytesIO(p), f"{i}.png") for i, p in enumerate(pictures)]}
                    path = "/v1/styles"
                began_cpu, began = time.process_time(), time.perf_counter()
                response = client.post(path, headers=headers, data=data)
                response.close()
                wall.append(time.perf_counter() - began)
                cpu.append(time.process_time() - began_cpu)
                statuses.append(response.status_code)
                if path == "/v1/styles" and response.status_code == 202:
                    job_ids.append(response.json["job_id"])  # type: ignore[index]
            results[name] = {"cpu_s": statistics.median(cpu), "wall_s": statistics.median(wall),
                             "status": sorted(set(statuses)), "body_bytes": sum(len(p) for p in pictures)}
            prepare = _preparation(svc, job_ids)
            if prepare is not None:
                results[name]["prepare_cpu_s"] = prepare
        svc.waiter.close()
        svc.db.engine.dispose()
        import redis

        redis.Redis.from_url(redis_url).delete("illustrations.prepare", "illustrations.training")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        with admin.connect() as connection:
            connection.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                       " WHERE datname = :n AND pid <> pg_backend_pid()"), {"n": database})
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}"'))
        admin.dispose()
    return results


def _preparation(svc: Any, job_ids: list[str]) -> float | None:
    """The preparation step's CPU time per training (median), where the tree has it for uploads."""
    try:
        from shared.models import StyleVersion
        from worker.style_preparation import prepare_style
    except ImportError:
        return None
    times = []
    for job_id in job_ids:
        with svc.db.begin() as session:
            queue = session.query(StyleVersion.queue).filter(StyleVersion.job_id == job_id).scalar()
        if queue != "illustrations.prepare":
            return None  # this tree decoded the uploads in the request
        began = time.process_time()
        outcome = prepare_style(svc.db, svc.storage, svc.fetcher, svc.publisher, job_id)
        times.append(time.process_time() - began)
        assert outcome == "prepared", outcome
    return statistics.median(times) if times else None


# --- The parent: export the base, alternate the trees, print the table ---------------------------------------------
def export(commit: str) -> Path:
    target = Path(tempfile.mkdtemp(prefix="bench-base-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return target


def run_tree(tree: Path, rounds: int, redis_url: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "bench.style_upload", "--child", str(tree), "--rounds", str(rounds),
         "--redis-url", redis_url],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
        env={k: v for k, v in os.environ.items() if not k.startswith("ILLUSTRATIONS_")},
    )
    if result.returncode != 0:
        raise SystemExit(f"{tree}: {result.stderr[-3000:]}")
    found: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="48e3beb", help="the commit to compare with (exported with git archive)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2, help="base/new pairs, alternating")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14", help="a Redis db the messages may go to")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.rounds, args.redis_url)))
        return
    base = export(args.base)
    print(f"load average (1 min) {os.getloadavg()[0]:.2f}; base {args.base} exported to {base}")
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "new": []}
    try:
        for _ in range(args.runs):
            runs["base"].append(run_tree(base, args.rounds, args.redis_url))
            runs["new"].append(run_tree(ROOT, args.rounds, args.redis_url))
    finally:
        shutil.rmtree(base)
    print(f"load average (1 min) {os.getloadavg()[0]:.2f}")
    print("| body | bytes | base: status, API CPU s (wall s) | new: status, API CPU s (wall s) | API CPU new/base "
          "| new: preparation step CPU s |")
    print("|---|---|---|---|---|---|")
    def cell(name: str, side: str, key: str) -> float:
        return statistics.median(run[name][key] for run in runs[side])

    def status(name: str, side: str) -> str:
        return "/".join(str(s) for s in sorted({s for run in runs[side] for s in run[name]["status"]}))

    for name in runs["base"][0]:

        prepare = [run[name]["prepare_cpu_s"] for run in runs["new"] if "prepare_cpu_s" in run[name]]
        prepared = f"{statistics.median(prepare):.3f}" if prepare else "—"
        print(f"| {name} | {runs['base'][0][name]['body_bytes']:,} "
              f"| {status(name, 'base')}, {cell(name, 'base', 'cpu_s'):.3f} ({cell(name, 'base', 'wall_s'):.3f}) "
              f"| {status(name, 'new')}, {cell(name, 'new', 'cpu_s'):.3f} ({cell(name, 'new', 'wall_s'):.3f}) "
              f"| {cell(name, 'new', 'cpu_s') / cell(name, 'base', 'cpu_s'):.3f}x | {prepared} |")


if __name__ == "__main__":
    main()
