"""The whole system with real processes: the API under gunicorn and Celery workers, over HTTP with a real key.

1. PostgreSQL + an S3 server, once on Redis and once on RabbitMQ: submit with a subject photo, poll to succeeded,
   download the images through the presigned redirect, check they are PNGs of the requested size.
2. The embedded mode with no configuration: each process started separately (worker first, API last), the job
   submitted with `illustrations submit --wait`, Flower listing the worker, `illustrations down` stopping Redis.
"""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
import requests
from PIL import Image

from tests.helpers import png, wait_for, wait_terminal
from tests.s3server import S3Server
from tests.system.procs import clean_env, free_port, http_ok, processes, run_cli

pytestmark = pytest.mark.system


def test_http_to_worker_to_s3_on_postgresql(fresh_pg_url: str, system_broker_url: str, s3_server: S3Server,
                                            tiny_model_dir: Path, tmp_path: Path) -> None:
    env = clean_env(
        VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=fresh_pg_url,
        BROKER_URL=system_broker_url,
        STORAGE_URL=f"s3://{s3_server.bucket}/system-{uuid.uuid4().hex[:8]}",
        S3_ENDPOINT_URL=s3_server.endpoint,
        S3_ACCESS_KEY_ID=s3_server.access_key,
        S3_SECRET_ACCESS_KEY=s3_server.secret_key,
        MODEL_DIR=str(tiny_model_dir),
        TORCH_THREADS="1",
        API_WORKERS="2",
    )
    key = run_cli(["keys", "create", "--name", f"system-{uuid.uuid4().hex[:6]}"], env, tmp_path).stdout
    key = key.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with processes(env, tmp_path, tmp_path / "logs") as procs:
        worker = procs.start("worker", "worker", "--hostname", "gpu0@system-test")
        procs.start("api", "api", "--bind", f"127.0.0.1:{port}")
        wait_for(http_ok(f"{base}/readyz"), 60, "the API")

        subject = requests.post(f"{base}/v1/subjects", headers=headers, timeout=10,
                                data={"user_id": "u-42", "name": "grandma"},
                                files={"image": ("grandma.png", png((80, 80), (210, 170, 140)))})
        assert subject.status_code == 201, subject.text
        response = requests.post(f"{base}/v1/illustrations", headers=headers, timeout=10, json={
            "user_id": "u-42",
            "prompt": "grandma teaching me to ride a bike",
            "subjects": [{"subject_id": subject.json()["id"]}],
            "params": {"width": 64, "height": 96, "steps": 2, "num_images": 2, "seed": 11},
        })
        assert response.status_code == 202, response.text
        assert response.headers["Location"] == f"/v1/illustrations/{response.json()['id']}"
        job = wait_terminal(base, headers, response.json()["id"])

        assert job["status"] == "succeeded", job
        assert job["attempts"] == 1
        assert job["progress"] == {"step": 2, "total": 2}
        assert job["model"]["profile"] == "tiny"
        assert job["timings"]["inference_s"] > 0
        assert len(job["images"]) == 2
        for image in job["images"]:
            redirect = requests.get(image["url"], headers=headers, allow_redirects=False, timeout=10)
            assert redirect.status_code == 302
            location = redirect.headers["Location"]
            assert location.startswith(s3_server.endpoint)
            assert "Signature" in location
            data = requests.get(location, timeout=10)
            assert data.status_code == 200
            picture = Image.open(io.BytesIO(data.content))
            assert picture.format == "PNG"
            assert picture.size == (64, 96)
            assert __import__("hashlib").sha256(data.content).hexdigest() == image["sha256"]
        # The presigned URL is bound to its signature.
        tampered = location.replace("Signature=", "Signature=0")
        assert requests.get(tampered, timeout=10).status_code == 403

        # A second job runs on the same warm pipeline: loaded once, in the pool child, never in the parent.
        second = requests.post(f"{base}/v1/illustrations", headers=headers, timeout=10, json={
            "user_id": "u-42", "prompt": "the same street in winter", "params": {"width": 64, "height": 64,
                                                                                 "steps": 2}})
        assert wait_terminal(base, headers, second.json()["id"])["status"] == "succeeded"
        # A draft of the first request, on the same warm pipeline: its 4 steps, answered inside the POST.
        draft = requests.post(f"{base}/v1/illustrations", headers={**headers, "Prefer": "wait=30"}, timeout=40, json={
            "user_id": "u-42", "prompt": "grandma teaching me to ride a bike",
            "subjects": [{"subject_id": subject.json()["id"]}],
            "params": {"width": 64, "height": 96, "num_images": 2, "seed": 11, "quality": "draft"}})
        assert draft.status_code == 200, draft.text
        assert draft.json()["status"] == "succeeded", draft.json()
        assert (draft.json()["model"]["quality"], draft.json()["progress"]) == ("draft", {"step": 4, "total": 4})
        assert draft.json()["images"][0]["sha256"] not in {image["sha256"] for image in job["images"]}
        loads = [line for line in worker.log().splitlines() if "pipeline tiny loaded" in line]
        assert len(loads) == 1, loads
        assert "ForkPoolWorker" in loads[0]


def test_embedded_mode_with_processes_started_separately(tmp_path: Path) -> None:
    env = clean_env()  # no configuration at all: SQLite, embedded Redis, local storage, tiny model under ./var
    run_cli(["models", "make-tiny", "var/models/tiny"], env, tmp_path)
    api_port, flower_port = free_port(), free_port()
    face = tmp_path / "face.png"
    face.write_bytes(png((80, 80), (210, 170, 140)))
    try:
        with processes(env, tmp_path, tmp_path / "logs") as procs:
            # Any order: the worker starts first and brings up the embedded Redis; the API comes last.
            procs.start("worker", "worker", "--hostname", "gpu0@embedded-test")
            procs.start("beat", "beat")
            procs.start("maintenance", "worker", "--queues", "illustrations.maintenance", "--pool", "threads",
                        "--hostname", "maintenance@embedded-test")
            procs.start("flower", "flower", "--port", str(flower_port))
            procs.start("api", "api", "--bind", f"127.0.0.1:{api_port}")
            wait_for(http_ok(f"http://127.0.0.1:{api_port}/readyz"), 60, "the API")
            assert requests.get(f"http://127.0.0.1:{api_port}/readyz", timeout=5).json() == {
                "database": "ok", "broker": "ok"}
            key = run_cli(["keys", "create", "--name", "embedded"], env, tmp_path).stdout.strip().splitlines()[-1]

            result = run_cli(["submit", "a picnic by the lake", "--subject", str(face), "--wait", "--width", "64",
                              "--height", "64", "--steps", "3", "--seed", "5", "--download-dir", "out",
                              "--api-url", f"http://127.0.0.1:{api_port}", "--key", key], env, tmp_path, timeout=240)
            job = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
            assert job["status"] == "succeeded"
            assert job["seed"] == 5
            image_line = [line for line in result.stdout.splitlines() if line.startswith("image: ")]
            assert len(image_line) == 1
            with Image.open(tmp_path / image_line[0].removeprefix("image: ")) as picture:
                assert picture.format == "PNG"
                assert picture.size == (64, 64)
            assert (tmp_path / "var" / "illustrations.db").is_file()
            assert (tmp_path / "var" / "storage" / "jobs" / job["id"] / "1" / "0.png").is_file()

            # Flower sees the generation worker and the queues through its API.
            flower = f"http://127.0.0.1:{flower_port}"
            wait_for(http_ok(f"{flower}/healthcheck"), 60, "Flower")

            def flower_lists_worker() -> bool:
                workers = requests.get(f"{flower}/api/workers?refresh=1", timeout=10)
                return workers.status_code == 200 and "gpu0@embedded-test" in workers.json()

            wait_for(flower_lists_worker, 60, "Flower to list the worker", interval_s=1)
            for proc in procs.started:
                assert proc.alive(), proc.log()[-3000:]
    finally:
        down = run_cli(["down"], env, tmp_path)
    assert "redis" in down.stdout
    assert not (tmp_path / "var" / "redis" / "redis.sock").exists()
