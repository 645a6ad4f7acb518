"""A GPU worker stopped the way Kubernetes stops it (the manifest's command, its preStop, SIGTERM within its grace
period) loses no job: the running one finishes, the queued ones wait for the next worker, nothing runs twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from sqlalchemy import func, select

from shared.db import Database
from shared.models import Job, JobImage
from shared.settings import Settings
from tests.helpers import ROOT, wait_for
from tests.system.procs import clean_env, free_port, http_ok, processes, run_cli

pytestmark = pytest.mark.system


def gpu_worker_manifest() -> tuple[list[str], list[str], int]:
    docs = yaml.safe_load_all((ROOT / "infra" / "k8s" / "worker-gpu.yaml").read_text())
    deployment = next(doc for doc in docs if doc["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    return container["command"], container["lifecycle"]["preStop"]["exec"]["command"], pod[
        "terminationGracePeriodSeconds"]


def job(base: str, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(f"{base}/v1/illustrations/{job_id}", headers=headers, timeout=10).json()
    return body


def test_a_worker_stopped_like_the_manifest_says_loses_no_job(pg_url: str, system_broker_url: str,
                                                             tiny_model_dir: Path, tmp_path: Path) -> None:
    command, pre_stop, grace_s = gpu_worker_manifest()
    assert command[0] == "illustrations"
    assert pre_stop[:2] == ["sh", "-c"]
    env = clean_env(VAR_DIR=str(tmp_path / "var"), DATABASE_URL=pg_url, BROKER_URL=system_broker_url,
                    STORAGE_URL=str(tmp_path / "storage"), MODEL_DIR=str(tiny_model_dir), TORCH_THREADS="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `illustrations` as in the image
    key = run_cli(["keys", "create", "--name", "rolling"], env, tmp_path).stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with processes(env, tmp_path, tmp_path / "logs") as procs:
        procs.start("api", "api", "--bind", f"127.0.0.1:{port}")
        old = procs.start("worker-old", *command[1:])
        wait_for(http_ok(f"{base}/readyz"), 60, "the API")

        def submit(steps: int, size: int) -> str:
            response = requests.post(f"{base}/v1/illustrations", headers=headers, timeout=10, json={
                "user_id": "u-1", "prompt": "a lighthouse", "params": {"width": size, "height": size,
                                                                       "steps": steps}})
            assert response.status_code == 202, response.text
            job_id: str = response.json()["id"]
            return job_id

        long_job = submit(100, 256)
        wait_for(lambda: job(base, headers, long_job)["status"] == "running", 120, "the long job to start")
        queued = [submit(2, 64) for _ in range(3)]

        # Kubernetes: preStop (drain), then SIGTERM, then SIGKILL after the grace period.
        drain_at = datetime.now(UTC)
        started = time.monotonic()
        drained = subprocess.run(pre_stop, env=env, cwd=tmp_path, capture_output=True, text=True,
                                 timeout=grace_s)
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert "idle" in drained.stdout
        assert old.stop(timeout_s=grace_s - (time.monotonic() - started)) == 0, old.log()[-3000:]

        finished = job(base, headers, long_job)
        assert finished["status"] == "succeeded"
        assert datetime.fromisoformat(finished["finished_at"]) > drain_at  # it was running while the pod drained
        assert all(job(base, headers, job_id)["status"] == "queued" for job_id in queued)  # not taken, not lost

        procs.start("worker-new", *command[1:])
        for job_id in queued:
            wait_for(lambda job_id=job_id: job(base, headers, job_id)["status"] == "succeeded", 120,  # type: ignore[misc]
                     f"job {job_id} on the new worker")

    database = Database(Settings(database_url=pg_url))
    with database.begin() as session:
        for job_id in [long_job, *queued]:
            row = session.get_one(Job, job_id)
            assert row.status == "succeeded"
            assert row.attempt == 1  # each ran exactly once
            images = session.execute(select(func.count()).select_from(JobImage).where(JobImage.job_id == job_id))
            assert images.scalar_one() == 1
    database.engine.dispose()
