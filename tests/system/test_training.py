"""Style training through the real queue and workers: the API under gunicorn, a training worker started as the
deployment starts it (`illustrations worker --queues illustrations.training`), a generation worker, the CPU worker
and beat, on PostgreSQL, Redis and an S3 server, the tiny model on a CPU.

1. A style trained from four uploaded pictures (10 steps) becomes ready and active, with a finite loss.
2. Generation with `style_lora: name` and `name@1` runs the trained LoRA and records `name@1`.
3. A running training is canceled through the API; the active version stays.
4. kill -9 of the training worker mid-training, a new worker: the lease runs out, the training is re-queued and
   resumes from its last checkpoint (the step count continues). Then SIGTERM to the new worker's main process only
   (as Kubernetes sends it): it checkpoints, gives the training back and exits within the grace period; a third
   worker resumes from that step and finishes.
"""

from __future__ import annotations

import io
import json
import math
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from shared.db import Database
from shared.settings import Settings
from tests.helpers import style_version, wait_for, wait_terminal
from tests.s3server import S3Server
from tests.system.procs import Proc, Processes, clean_env, free_port, http_ok, processes, run_cli

pytestmark = pytest.mark.system

PARAMS = {"rank": 4, "resolution": 64, "learning_rate": 0.005, "seed": 4}


def pictures() -> list[tuple[str, tuple[str, io.BytesIO, str]]]:
    rng = np.random.default_rng(3)
    files = []
    for index in range(4):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (72, 64 + 8 * index, 3), dtype=np.uint8)).save(buffer, format="PNG")
        buffer.seek(0)
        files.append(("image", (f"{index}.png", buffer, "image/png")))
    return files


def start_training(base: str, headers: dict[str, str], steps: int) -> dict[str, Any]:
    data = {"name": "watercolor", "caption": [f"a watercolor picture {i}" for i in range(4)],
            "params": json.dumps({**PARAMS, "steps": steps}), "user_id": "u-artist"}
    response = requests.post(f"{base}/v1/styles", headers=headers, data=data, files=pictures(), timeout=30)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def version_out(base: str, headers: dict[str, str], number: int) -> dict[str, Any]:
    style = requests.get(f"{base}/v1/styles/watercolor", headers=headers, timeout=10).json()
    found: dict[str, Any] = next(v for v in style["versions"] if v["version"] == number)
    return {**found, "active_version": style["active_version"]}


def wait_version(base: str, headers: dict[str, str], number: int, states: tuple[str, ...],
                 timeout_s: float = 240) -> dict[str, Any]:
    result: dict[str, Any] = {}

    def reached() -> bool:
        result.update(version_out(base, headers, number))
        return result["status"] in states

    wait_for(reached, timeout_s, f"version {number} to be {'/'.join(states)}", interval_s=0.2)
    return result


def trainer(procs: Processes, name: str) -> Proc:
    return procs.start(name, "worker", "--queues", "illustrations.training", "--hostname", f"train@{name}")


def test_train_generate_cancel_kill_and_sigterm_through_real_workers(
        fresh_pg_url: str, system_redis_url: str, s3_server: S3Server, tiny_model_dir: Path, tmp_path: Path) -> None:
    env = clean_env(
        VAR_DIR=str(tmp_path / "var"), DATABASE_URL=fresh_pg_url, BROKER_URL=system_redis_url,
        STORAGE_URL=f"s3://{s3_server.bucket}/training-{uuid.uuid4().hex[:8]}", S3_ENDPOINT_URL=s3_server.endpoint,
        S3_ACCESS_KEY_ID=s3_server.access_key, S3_SECRET_ACCESS_KEY=s3_server.secret_key,
        MODEL_DIR=str(tiny_model_dir), TORCH_THREADS="1", API_WORKERS="1",
        LEASE_S="3", HEARTBEAT_S="0.5", RELAY_INTERVAL_S="1", RELAY_DELAY_S="1", PROGRESS_INTERVAL_S="0.2",
        TRAINING_CHECKPOINT_EVERY="5",
    )
    key = run_cli(["keys", "create", "--name", f"training-{uuid.uuid4().hex[:6]}", "--scope", "generate",
                   "--scope", "styles"], env, tmp_path).stdout.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    db = Database(Settings(database_url=fresh_pg_url))
    with processes(env, tmp_path, tmp_path / "logs") as procs:
        first_trainer = trainer(procs, "first")
        procs.start("gpu", "worker", "--hostname", "gpu0@training-test")
        procs.start("cpu", "worker", "--queues", "illustrations.maintenance,illustrations.prepare", "--pool",
                    "threads", "--hostname", "cpu@training-test")
        procs.start("beat", "beat")
        procs.start("api", "api", "--bind", f"127.0.0.1:{port}")
        wait_for(http_ok(f"{base}/readyz"), 60, "the API")

        # 1. Ten steps through the training queue: ready, active, a finite loss.
        first = start_training(base, headers, steps=10)
        assert first["version"] == 1
        assert first["status"] == "queued"
        ready = wait_version(base, headers, 1, ("ready", "failed", "canceled"))
        assert ready["status"] == "ready", ready
        assert ready["progress"] == {"step": 10, "total": 10}
        assert ready["attempts"] == 1
        assert math.isfinite(ready["loss"])
        assert ready["active_version"] == 1
        assert ready["rank"] == 4
        assert ready["alpha"] == 4.0
        assert ready["images"] == 4
        assert "pipeline tiny loaded" not in first_trainer.log()  # no generation pipeline in a training worker

        # 2. Generation with the style by name and by name@version: the trained LoRA, recorded as watercolor@1.
        for style_lora in ("watercolor", "watercolor@1"):
            job = requests.post(f"{base}/v1/illustrations", headers=headers, timeout=10, json={
                "user_id": "u-42", "prompt": "a house by the sea",
                "params": {"width": 64, "height": 64, "steps": 2, "seed": 3, "style_lora": style_lora}}).json()
            done = wait_terminal(base, headers, job["id"])
            assert done["status"] == "succeeded", done
            assert done["model"]["style_lora"] == "watercolor@1"

        # 3. Cancel a running training: it stops at its next step, and version 1 stays active.
        long = start_training(base, headers, steps=5000)
        wait_for(lambda: (version_out(base, headers, 2)["progress"] or {}).get("step", 0) >= 1, 120,
                 "version 2 running", interval_s=0.2)
        assert requests.post(f"{base}/v1/styles/watercolor/versions/2/cancel", headers=headers,
                             timeout=10).status_code == 202
        canceled = wait_version(base, headers, 2, ("canceled", "ready", "failed"), timeout_s=60)
        assert canceled["status"] == "canceled"
        assert canceled["error"]["code"] == "canceled_by_client"
        assert canceled["progress"]["step"] < 5000
        assert canceled["active_version"] == 1
        assert style_version(db, long["job_id"]).checkpoint_step is None

        # 4a. kill -9 mid-training (after a checkpoint); a new worker resumes from it once the lease runs out.
        third = start_training(base, headers, steps=150)
        wait_for(lambda: (style_version(db, third["job_id"]).checkpoint_step or 0) >= 5, 120,
                 "a checkpoint of version 3")
        os.killpg(first_trainer.process.pid, signal.SIGKILL)
        first_trainer.process.wait(30)
        killed_at = style_version(db, third["job_id"]).checkpoint_step or 0
        assert 5 <= killed_at < 150
        second_trainer = trainer(procs, "second")
        wait_for(lambda: style_version(db, third["job_id"]).attempt == 2, 120, "attempt 2 of version 3")
        assert f"resumes from the checkpoint at step {killed_at} (attempt 2)" in wait_log(second_trainer,
                                                                                           "resumes from")
        wait_for(lambda: (style_version(db, third["job_id"]).progress_step or 0) >= killed_at + 10, 120, "progress on")

        # 4b. SIGTERM to the main process only: a checkpoint, the training back in the queue, a clean exit.
        os.kill(second_trainer.process.pid, signal.SIGTERM)
        assert second_trainer.process.wait(90) == 0
        given_back = style_version(db, third["job_id"])
        assert (given_back.status, given_back.requeues) == ("queued", 1), given_back.status
        stopped_at = given_back.checkpoint_step or 0
        assert killed_at + 10 <= stopped_at < 150
        assert f"given back at step {stopped_at}: the worker is stopping" in second_trainer.log()
        third_trainer = trainer(procs, "third")
        finished = wait_version(base, headers, 3, ("ready", "failed", "canceled"))
        assert finished["status"] == "ready", finished
        assert f"resumes from the checkpoint at step {stopped_at} (attempt 3)" in third_trainer.log()
        assert finished["progress"] == {"step": 150, "total": 150}
        assert finished["attempts"] == 3
        assert finished["active_version"] == 3
    db.engine.dispose()


def wait_log(proc: Proc, text: str, timeout_s: float = 120) -> str:
    wait_for(lambda: text in proc.log(), timeout_s, f"{text!r} in the log of {proc.name}")
    return proc.log()
