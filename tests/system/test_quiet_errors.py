"""Database errors never put what a client sent into a log: real gunicorn API, Celery worker and CLI processes, all
logging at DEBUG (the most an operator can turn on), each made to hit a database error whose every word could
carry a marker string, then every log grepped for it.

PostgreSQL refuses the writes by NOT VALID check constraints added for the test (existing rows are not checked):
its error then says ``Failing row contains (...)`` with the whole row, and SQLAlchemy's message would add the
statement's parameters.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from tests.helpers import wait_for
from tests.system.procs import clean_env, cli, free_port, http_ok, processes, run_cli

pytestmark = pytest.mark.system

PARAMS = {"width": 64, "height": 64, "steps": 2, "seed": 5}


def refuse(url: str, markers: dict[str, str]) -> None:
    """Constraints that refuse a write carrying a marker: the API's insert of a job, the worker's success of one,
    the CLI's new client."""
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for statement in (
            f"ALTER TABLE jobs ADD CONSTRAINT refuse_api CHECK (position('{markers['api']}' in request::text) = 0)",
            f"ALTER TABLE jobs ADD CONSTRAINT refuse_worker CHECK (status <> 'succeeded' OR "
            f"position('{markers['worker']}' in request::text) = 0)",
            f"ALTER TABLE clients ADD CONSTRAINT refuse_cli CHECK (position('{markers['cli']}' in name) = 0)",
        ):
            connection.execute(sa.text(statement + " NOT VALID"))
    engine.dispose()


def test_database_errors_never_log_what_a_client_sent(fresh_pg_url: str, system_redis_url: str,
                                                      tiny_model_dir: Path, tmp_path: Path) -> None:
    markers = {part: f"memoir-{part}-{uuid.uuid4().hex[:8]}" for part in ("api", "worker", "cli")}
    env = clean_env(VAR_DIR=str(tmp_path / "var"), DATABASE_URL=fresh_pg_url, BROKER_URL=system_redis_url,
                    STORAGE_URL=str(tmp_path / "storage"), MODEL_DIR=str(tiny_model_dir), TORCH_THREADS="1",
                    API_WORKERS="1", LOG_LEVEL="DEBUG", LOG_FORMAT="text")
    key = run_cli(["keys", "create", "--name", f"quiet-{uuid.uuid4().hex[:6]}"], env, tmp_path).stdout
    headers = {"Authorization": f"Bearer {key.strip().splitlines()[-1]}"}
    refuse(fresh_pg_url, markers)
    logs: dict[str, str] = {}

    # The CLI: a new client whose name the database refuses.
    command = subprocess.run(cli("keys", "create", "--name", f"family of {markers['cli']}"), env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert command.returncode != 0
    logs["cli"] = command.stdout + command.stderr
    assert "refuse_cli" in logs["cli"]  # it says which rule the database applied ...

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with processes(env, tmp_path, tmp_path / "logs") as procs:
        worker = procs.start("worker", "worker", "--hostname", "gpu0@quiet")
        api = procs.start("api", "api", "--bind", f"127.0.0.1:{port}")
        wait_for(http_ok(f"{base}/readyz"), 60, "the API")
        # The API: the job's insert is refused.
        refused = requests.post(f"{base}/v1/illustrations", headers=headers, timeout=30, json={
            "user_id": "u-quiet", "prompt": f"grandma said {markers['api']}", "params": PARAMS})
        assert refused.status_code == 500
        assert markers["api"] not in refused.text
        # The worker: the job runs, and its success is refused.
        accepted = requests.post(f"{base}/v1/illustrations", headers=headers, timeout=30, json={
            "user_id": "u-quiet", "prompt": f"grandpa said {markers['worker']}", "params": PARAMS})
        assert accepted.status_code == 202, accepted.text
        job: dict[str, Any] = {}

        def finished() -> bool:
            job.update(requests.get(f"{base}/v1/illustrations/{accepted.json()['id']}", headers=headers,
                                    timeout=10).json())
            return job["status"] in ("succeeded", "failed", "canceled")

        wait_for(finished, 180, "the job to finish", interval_s=0.2)
        assert (job["status"], job["error"]["code"]) == ("failed", "internal"), job
        wait_for(lambda: "refuse_worker" in worker.log(), 30, "the worker's log of the refused success")
        assert "refuse_api" in api.log()
    logs.update({proc.name: proc.log() for proc in procs.started})

    # ... and nothing a client sent, in any process's log.
    for name, text in logs.items():
        for part, marker in markers.items():
            assert marker not in text, f"the {part} marker is in the {name} log"
