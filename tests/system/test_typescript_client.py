"""The TypeScript client's own tests (``clients/typescript/test``, ``npm test``: compiled by tsc, run by Node's test
runner) against the real processes: the API under gunicorn, a generation worker with the tiny model, the CPU worker
(preparation, maintenance, webhooks) and beat. They upload a subject, submit, wait and download; use the legacy
route; receive a webhook on a Node server on loopback (allowlisted) and verify it with ``standardwebhooks``; read a
422's field codes."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import redis
from cryptography.fernet import Fernet

from tests.helpers import SYSTEM_REDIS_URL, new_database, png, typescript_client, wait_for
from tests.system.procs import clean_env, free_port, http_ok, processes, run_cli

pytestmark = pytest.mark.system

NODE_TESTS = 4
CPU_QUEUES = "illustrations.maintenance,illustrations.prepare,illustrations.webhooks"


def test_the_typescript_client_against_the_stack(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A database and broker of its own: jobs other system tests left unsent would be relayed to this stack's one
    # generation worker (full-size tiny jobs take minutes on a CPU) ahead of the client's.
    redis.Redis.from_url(SYSTEM_REDIS_URL).flushdb()
    with new_database("illustrations_ts") as url:
        run(url, tiny_model_dir, tmp_path)


def run(pg_url: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    package = typescript_client()
    system_redis_url = SYSTEM_REDIS_URL
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(
        VAR_DIR=str(tmp_path / "var"), DATABASE_URL=pg_url, BROKER_URL=system_redis_url,
        STORAGE_URL=str(tmp_path / "storage"), MODEL_DIR=str(tiny_model_dir), TORCH_THREADS="1", API_WORKERS="2",
        PUBLIC_BASE_URL=base, FETCH_ALLOWLIST='["127.0.0.1/32"]', RELAY_INTERVAL_S="1",
        WEBHOOK_DISPATCH_INTERVAL_S="0.2", WEBHOOK_SECRET_KEYS=json.dumps([Fernet.generate_key().decode()]),
    )
    name = f"ts-{uuid.uuid4().hex[:6]}"
    key = run_cli(["keys", "create", "--name", name], env, tmp_path).stdout.strip().splitlines()[-1]
    secret = run_cli(["webhooks", "secret", "--name", name], env, tmp_path).stdout.strip().splitlines()[-1]
    assert secret.startswith("whsec_")
    photo = tmp_path / "grandma.png"
    photo.write_bytes(png((96, 96), (180, 140, 110)))
    with processes(env, tmp_path, tmp_path / "logs") as procs:
        procs.start("gpu", "worker", "--hostname", "gpu0@ts")
        procs.start("cpu", "worker", "--queues", CPU_QUEUES, "--pool", "threads", "--hostname", "cpu@ts")
        procs.start("beat", "beat")
        procs.start("api", "api", "--bind", f"127.0.0.1:{port}")
        wait_for(http_ok(f"{base}/readyz"), 60, "the API")
        node_env = {**os.environ, "AUTOBIO_API_URL": base, "AUTOBIO_API_KEY": key, "AUTOBIO_WEBHOOK_SECRET": secret,
                    "AUTOBIO_TEST_PHOTO": str(photo)}
        try:
            result = subprocess.run(["npm", "test"], cwd=package, env=node_env, capture_output=True, text=True,
                                    timeout=400)
        except subprocess.TimeoutExpired as exc:  # say which Node test was waiting, and what the processes did
            partial = b"".join(part or b"" if isinstance(part, bytes) else (part or "").encode()
                               for part in (exc.stdout, exc.stderr)).decode(errors="replace")
            pytest.fail(f"npm test ran past 400 s:\n{partial}\n{procs.logs()}")
        output = result.stdout + result.stderr
        assert result.returncode == 0, output + procs.logs()
    # Every test ran and passed (none skipped for want of the stack's address).
    assert f"# pass {NODE_TESTS}" in output, output
    assert "# fail 0" in output and "# skipped 0" in output, output
