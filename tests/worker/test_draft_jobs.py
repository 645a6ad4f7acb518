"""Draft jobs from id to finished row, without Celery: real database and storage, the tiny model's draft LoRA.

A draft job says which quality ran (``model.quality``) and records it in its metrics row; draft and final jobs run
one after another on one warm worker without a reload; a worker without the draft file answers draft jobs
``setup_failed`` naming the file, and runs final jobs as before.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.db import Database
from tests.helpers import add_job, load, metric_rows, request_doc
from worker.generation import run_generation
from worker.pipeline.profiles import DRAFT
from worker.runtime import Runtime

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def draft_doc(**params: object) -> dict[str, object]:
    """A draft's stored request as the API leaves it (the variant's steps and guidance filled in)."""
    return request_doc(steps=DRAFT.steps, guidance_scale=DRAFT.guidance_scale, quality="draft", **params)


def test_a_draft_job_says_which_quality_ran(runtime: Runtime, db: Database) -> None:
    job_id = add_job(db, request=draft_doc(num_images=2), seed=4)
    assert run_generation(job_id, runtime) == "succeeded"
    job = load(db, job_id)
    assert job.model is not None
    assert job.model["quality"] == "draft"
    assert job.model["draft_lora"] == "sdxl_lightning_4step_lora"
    assert job.progress_step == job.progress_total == DRAFT.steps
    [row] = metric_rows(db, [job_id])
    assert (row.quality, row.steps, row.outcome) == ("draft", DRAFT.steps, "succeeded")


def test_draft_and_final_jobs_share_one_warm_pipeline(runtime: Runtime, db: Database) -> None:
    final = add_job(db, request=request_doc(), seed=4)
    assert run_generation(final, runtime) == "succeeded"
    engine = runtime.loaded_engine()
    assert engine is not None
    pipe, load_seconds = engine.pipe, runtime.load_seconds
    for doc in (draft_doc(), request_doc(), draft_doc()):
        assert run_generation(add_job(db, request=doc, seed=4), runtime) == "succeeded"
    assert runtime.loaded_engine() is engine and engine.pipe is pipe
    assert runtime.load_seconds == load_seconds  # loaded once
    again = add_job(db, request=request_doc(), seed=4)
    assert run_generation(again, runtime) == "succeeded"
    first, second = (load(db, job_id) for job_id in (final, again))
    assert first.model is not None and second.model is not None
    assert first.model["quality"] == second.model["quality"] == "final"
    assert [row.quality for row in metric_rows(db, [final, again])] == ["final", "final"]


def test_a_worker_without_the_draft_file_fails_drafts_naming_it_and_runs_finals(
    make_runtime: Callable[..., Runtime], tiny_model_dir: Path, tmp_path: Path, db: Database
) -> None:
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "draft" / DRAFT.weight).unlink()
    runtime = make_runtime(model_dir=copy, torch_threads=1)
    draft = add_job(db, request=draft_doc(), seed=4)
    assert run_generation(draft, runtime) == "failed:setup_failed"
    job = load(db, draft)
    assert job.error_code == "setup_failed"
    assert job.error_message is not None and f"draft/{DRAFT.weight}" in job.error_message
    assert runtime.setup_error is None  # the worker itself is healthy
    final = add_job(db, request=request_doc(), seed=4)
    assert run_generation(final, runtime) == "succeeded"
    assert [row.quality for row in metric_rows(db, [draft])] == ["draft"]
