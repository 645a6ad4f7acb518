"""The on-finished hooks (``shared.jobs.on_finished``): ``shared.jobs`` never imports the areas that follow finished
jobs, so every process that finishes jobs must have imported them. The cache's own tests prove what the hook does;
these prove who registers it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence

import pytest
from sqlalchemy.orm import Session

from shared import jobs
from shared.db import Database
from shared.errors import CancelReason
from shared.models import Client
from tests.helpers import ROOT


def hooks_after_importing(module: str) -> list[str]:
    """The hook names registered in a fresh interpreter that imported ``module`` (and nothing else of ours)."""
    code = (
        "import importlib, json\n"
        f"importlib.import_module({module!r})\n"
        "from shared import jobs\n"
        "print(json.dumps(sorted(jobs.finished_hooks())))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    names: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return names


def test_the_transitions_alone_register_no_hook() -> None:
    assert hooks_after_importing("shared.jobs") == []


@pytest.mark.parametrize("process_root", [
    "api",                # the API: cache hits are born finished there, clients cancel there
    "worker.celery_app",  # every worker and beat: generation, preparation, maintenance, user deletion
    "cli.ops_actions",    # `illustrations ops cancel`
])
def test_every_process_that_finishes_jobs_registers_the_result_cache(process_root: str) -> None:
    assert "cache" in hooks_after_importing(process_root)


def test_a_registered_hook_runs_once_with_the_jobs_a_transition_finished(any_db: Database) -> None:
    seen: list[list[str]] = []

    @jobs.on_finished("test-recorder")
    def record(_session: Session, job_ids: Sequence[str]) -> None:
        seen.append(list(job_ids))

    try:
        with any_db.begin() as session:
            client = Client(name=f"hooks-{time.monotonic_ns()}")
            session.add(client)
            session.flush()
            job = jobs.new_job(client_id=client.id, user_id="u1", priority="interactive",
                               queue="illustrations.interactive", request={"prompt": "p"}, seed=1)
            session.add(job)
            session.flush()
        with any_db.begin() as session:
            assert jobs.canceled(session, job.id, CancelReason.CANCELED_BY_CLIENT)
        assert seen == [[job.id]]
    finally:
        jobs._finished_hooks.pop("test-recorder", None)
