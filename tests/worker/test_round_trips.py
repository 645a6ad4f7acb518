"""Round trips per job do not regress: the statements a tiny job sends to PostgreSQL, counted with SQLAlchemy
events on the worker's own engine (what ``bench/profile_job.py`` measures)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from shared import jobs
from shared.db import Database
from shared.models import JobTransition
from tests.helpers import add_job, request_doc
from worker.generation import run_generation
from worker.runtime import Runtime

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


@pytest.fixture
def runtime(make_runtime: Callable[..., Runtime], tiny_model_dir: Path) -> Runtime:
    # No heartbeat or progress write during a ~0.1 s job: only the claim and the finish are counted.
    return make_runtime(model_dir=tiny_model_dir, torch_threads=1, heartbeat_s=60, progress_interval_s=60)


class Transactions:
    """Statements per transaction, in order; those sent inside ``jobs.finished`` are kept apart."""

    def __init__(self, engine: Any) -> None:
        self.done: list[list[str]] = []
        self.current: list[str] = []
        self.in_finished = 0
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "commit", self._commit)

    def _statement(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        self.current.append(("finished: " if self.in_finished else "") + " ".join(statement.split()[:3]))

    def _commit(self, conn: Any) -> None:
        self.done.append(self.current)
        self.current = []


def test_a_job_claims_in_one_statement_and_finishes_in_one_transaction(
        runtime: Runtime, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = add_job(db, request=request_doc(), seed=3)
    assert run_generation(add_job(db, request=request_doc(), seed=4), runtime) == "succeeded"  # warm
    seen = Transactions(runtime.db.engine)
    real_finished = jobs.finished

    def finished(session: Session, job_ids: Sequence[str]) -> None:  # a spy: the real seam runs
        seen.in_finished += 1
        try:
            real_finished(session, job_ids)
        finally:
            seen.in_finished -= 1

    monkeypatch.setattr(jobs, "finished", finished)
    assert run_generation(job_id, runtime) == "succeeded"
    assert len(seen.done) == 2, seen.done  # the claim, the finish: nothing else commits
    claim, finish = seen.done
    assert len(claim) == 1, claim
    assert claim[0].startswith("WITH claimed AS"), claim  # UPDATE + audit row, one round trip
    ours = [s for s in finish if not s.startswith("finished: ")]
    # The fenced UPDATE, its audit row, the image rows, the metrics row (plus what finished() adds, not counted).
    assert ours == ["UPDATE jobs SET", "INSERT INTO job_transitions", "INSERT INTO job_images",
                    "INSERT INTO generation_metrics"], finish
    with db.begin() as session:
        trail = session.execute(select(JobTransition.from_status, JobTransition.to_status, JobTransition.attempt,
                                       JobTransition.worker).where(JobTransition.job_id == job_id)
                                .order_by(JobTransition.id)).all()
    assert [tuple(row) for row in trail] == [(None, "queued", 0, None), ("queued", "running", 1, runtime.worker_name),
                                             ("running", "succeeded", 1, runtime.worker_name)]
