"""The contract's moving parts across real processes: a URL reference fetched by the CPU worker (prepare queue),
the generation on the GPU worker, the API's `Prefer: wait` woken by PostgreSQL's NOTIFY from the worker, and a user
deletion run by the maintenance worker."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.helpers import png, wait_for
from tests.httpservers import Server
from tests.system.procs import clean_env, free_port, http_ok, processes, run_cli

pytestmark = pytest.mark.system


def test_url_reference_to_gpu_with_wait_then_user_deletion(pg_url: str, system_redis_url: str,
                                                           tiny_model_dir: Path, tmp_path: Path) -> None:
    photos = Server({"/dad.png": (200, {"Content-Type": "image/png"}, png((72, 72), (120, 90, 200)))})
    env = clean_env(
        VAR_DIR=str(tmp_path / "var"), DATABASE_URL=pg_url, BROKER_URL=system_redis_url,
        STORAGE_URL=str(tmp_path / "storage"), MODEL_DIR=str(tiny_model_dir), TORCH_THREADS="1", API_WORKERS="1",
        FETCH_ALLOWLIST='["127.0.0.1/32"]', RELAY_INTERVAL_S="1", DELETION_RETRY_S="0.5",
    )
    name = f"contract-{uuid.uuid4().hex[:6]}"
    key = run_cli(["keys", "create", "--name", name, "--scope", "generate", "--scope", "admin"], env, tmp_path)
    headers = {"Authorization": f"Bearer {key.stdout.strip().splitlines()[-1]}"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    try:
        with processes(env, tmp_path, tmp_path / "logs") as procs:
            gpu = procs.start("gpu", "worker", "--hostname", "gpu0@contract")
            procs.start("cpu", "worker", "--queues", "illustrations.maintenance,illustrations.prepare", "--pool",
                        "threads", "--hostname", "cpu@contract")
            procs.start("api", "api", "--bind", f"127.0.0.1:{port}")
            wait_for(http_ok(f"{base}/readyz"), 60, "the API")

            started = time.monotonic()
            response = requests.post(f"{base}/v1/illustrations", timeout=90, headers={**headers, "Prefer": "wait=60"},
                                     json={"user_id": "u-sys", "prompt": "dad fixing the car",
                                           "subjects": [{"name": "dad", "image_url": f"http://127.0.0.1:{photos.port}"
                                                                                     "/dad.png"}],
                                           "params": {"width": 64, "height": 64, "steps": 2, "seed": 3}})
            assert response.status_code == 200, (response.status_code, response.text, procs.logs())
            job: Any = response.json()
            assert job["status"] == "succeeded", job
            assert len(job["images"]) == 1, job
            assert time.monotonic() - started < 60
            assert [path for path, _ in photos.requests] == ["/dad.png"]  # fetched once, by the CPU worker
            subjects: Any = requests.get(f"{base}/v1/subjects?user_id=u-sys", headers=headers, timeout=10).json()
            assert [s["name"] for s in subjects["items"]] == ["dad"]
            assert "fetch" not in gpu.log().lower()

            deletion = requests.delete(f"{base}/v1/users/u-sys", headers=headers, timeout=10)
            assert deletion.status_code == 202
            status_url = base + deletion.headers["Location"]

            def deleted() -> bool:
                return bool(requests.get(status_url, headers=headers, timeout=10).json()["status"] == "succeeded")

            wait_for(deleted, 60, "the user deletion", interval_s=0.2)
            assert requests.get(f"{base}/v1/illustrations/{job['id']}", headers=headers,
                                timeout=10).status_code == 404
            assert requests.get(f"{base}/v1/subjects?user_id=u-sys", headers=headers,
                                timeout=10).json()["items"] == []
            assert not list((tmp_path / "storage").rglob("*.png"))
    finally:
        photos.close()
