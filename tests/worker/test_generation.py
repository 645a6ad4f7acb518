"""One generation from job id to finished row, without Celery: real database, real storage, the tiny model."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image
from sqlalchemy import select

from shared import jobs
from shared.db import Database, is_unavailable
from shared.models import JobImage
from shared.settings import Settings
from tests.shared.test_jobs import add_job, load
from worker.generation import retry_delay, run_generation
from worker.runtime import Runtime

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def request_doc(steps: int = 2, width: int = 64, height: int = 64, **params: object) -> dict[str, object]:
    return {
        "prompt": "a quiet street in the rain",
        "negative_prompt": None,
        "params": {"width": width, "height": height, "steps": steps, "guidance_scale": 5.0, "num_images": 1,
                   "identity_scale": 0.6, "style_scale": 0.8, "content_scale": 1.0, "output_format": "png",
                   **params},
        "resolved": {"identity": [], "style": None},
    }


@pytest.fixture
def runtime(settings: Settings, tiny_model_dir: Path) -> Iterator[Runtime]:
    runtime = Runtime(settings.model_copy(update={"model_dir": tiny_model_dir, "torch_threads": 1}))
    yield runtime
    runtime.db.engine.dispose()


def stored_images(db: Database, job_id: str) -> list[JobImage]:
    with db.begin() as session:
        return list(session.execute(select(JobImage).where(JobImage.job_id == job_id)).scalars())


def test_a_job_runs_to_succeeded_with_its_images_stored(runtime: Runtime, db: Database) -> None:
    job_id = add_job(db, request=request_doc(width=64, height=96, num_images=2), seed=7)
    assert run_generation(job_id, runtime) == "succeeded"
    job = load(db, job_id)
    assert job.status == "succeeded" and job.attempt == 1 and job.finished_at is not None
    assert job.progress_step == job.progress_total == 2
    assert job.timings is not None and set(job.timings) == {"queued_s", "inference_s", "total_s"}
    assert job.model is not None and job.model["profile"] == "tiny" and job.model["revision"].startswith("tiny-")
    images = stored_images(db, job_id)
    assert [image.index for image in images] == [0, 1]
    for image in images:
        assert image.storage_key == f"jobs/{job_id}/1/{image.index}.png"
        data = runtime.storage.get(image.storage_key)
        decoded = Image.open(io.BytesIO(data))
        assert decoded.format == "PNG" and decoded.size == (64, 96) and image.size_bytes == len(data)
        assert not decoded.info.get("prompt") and not getattr(decoded, "text", {})  # no memoir text in files


def test_png_metadata_only_when_enabled(runtime: Runtime, db: Database) -> None:
    runtime.settings = runtime.settings.model_copy(update={"png_metadata": True})
    job_id = add_job(db, request=request_doc(), seed=3, prompt_used="a quiet street in the rain")
    assert run_generation(job_id, runtime) == "succeeded"
    data = runtime.storage.get(stored_images(db, job_id)[0].storage_key)
    assert Image.open(io.BytesIO(data)).text["prompt"] == "a quiet street in the rain"  # type: ignore[attr-defined]


def test_same_seed_same_image(runtime: Runtime, db: Database) -> None:
    digests = []
    for _ in range(2):
        job_id = add_job(db, request=request_doc(), seed=1234)
        run_generation(job_id, runtime)
        digests.append(stored_images(db, job_id)[0].sha256)
    other = add_job(db, request=request_doc(), seed=1235)
    run_generation(other, runtime)
    assert digests[0] == digests[1] != stored_images(db, other)[0].sha256


def test_subject_references_are_read_from_storage(runtime: Runtime, db: Database) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), (200, 150, 120)).save(buffer, format="PNG")
    runtime.storage.put("subjects/s1/v1.png", buffer.getvalue(), "image/png")
    ref = {"subject_id": "s1", "version": 1, "storage_key": "subjects/s1/v1.png", "sha256": "x"}
    with_ref = add_job(db, request={**request_doc(), "resolved": {"identity": [ref], "style": ref}}, seed=5)
    without = add_job(db, request=request_doc(), seed=5)
    assert run_generation(with_ref, runtime) == "succeeded"
    assert run_generation(without, runtime) == "succeeded"
    assert stored_images(db, with_ref)[0].sha256 != stored_images(db, without)[0].sha256


def test_a_missing_reference_fails_reference_invalid(runtime: Runtime, db: Database) -> None:
    ref = {"subject_id": "s2", "version": 1, "storage_key": "subjects/s2/v1.png", "sha256": "x"}
    job_id = add_job(db, request={**request_doc(), "resolved": {"identity": [ref], "style": None}})
    assert run_generation(job_id, runtime) == "failed:reference_invalid"
    job = load(db, job_id)
    assert job.status == "failed" and job.error_code == "reference_invalid" and stored_images(db, job_id) == []


def test_a_redelivered_message_is_dropped(runtime: Runtime, db: Database) -> None:
    job_id = add_job(db, request=request_doc())
    assert run_generation(job_id, runtime) == "succeeded"
    assert run_generation(job_id, runtime) == "skipped:terminal"
    leased = add_job(db, request=request_doc())
    with db.begin() as session:
        assert isinstance(jobs.started(session, leased, "someone-else", 60), jobs.Claim)
    assert run_generation(leased, runtime) == "skipped:leased"
    assert load(db, leased).worker == "someone-else"


def test_missing_weights_fail_setup_failed_naming_the_fix(settings: Settings, db: Database, tmp_path: Path) -> None:
    runtime = Runtime(settings.model_copy(update={"model_dir": tmp_path / "nothing-here"}))
    job_id = add_job(db, request=request_doc())
    assert run_generation(job_id, runtime) == "failed:setup_failed"
    job = load(db, job_id)
    assert job.error_code == "setup_failed"
    assert job.error_message is not None and "make-tiny" in job.error_message
    assert str(tmp_path / "nothing-here") in job.error_message
    runtime.db.engine.dispose()


def test_cancel_while_running_stops_and_stores_nothing(runtime: Runtime, db: Database) -> None:
    runtime.settings = runtime.settings.model_copy(update={"progress_interval_s": 0.0})
    job_id = add_job(db, request=request_doc(steps=100))
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(run_generation(job_id, runtime)))
    worker.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = load(db, job_id)
        if job.status == "running" and job.progress_step:
            break
        time.sleep(0.01)
    with db.begin() as session:
        assert jobs.request_cancel(session, job_id)
    worker.join(60)
    assert outcome == ["canceled"]
    job = load(db, job_id)
    assert job.status == "canceled" and job.error_code == "canceled_by_client"
    assert job.progress_step is not None and job.progress_step < 100
    assert stored_images(db, job_id) == [] and not runtime.storage.exists(f"jobs/{job_id}/1/0.png")


def test_a_storage_fault_is_retried_with_backoff_then_fails_on_the_last_attempt(runtime: Runtime,
                                                                                 db: Database) -> None:
    runtime.settings = runtime.settings.model_copy(update={"max_attempts": 2, "retry_backoff_s": 30.0})
    job_id = add_job(db, request=request_doc())
    # A real fault of the store: a file where the job's folder must go (no mock; root ignores permissions).
    blocker = Path(runtime.settings.effective_storage_url) / "jobs" / job_id
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_bytes(b"")
    assert run_generation(job_id, runtime) == "requeued:storage"
    job = load(db, job_id)
    assert job.status == "queued" and job.attempt == 1 and job.published_at is None
    assert job.not_before is not None and job.not_before > datetime.now(UTC) + timedelta(seconds=10)  # backoff
    assert run_generation(job_id, runtime) == "failed:internal"  # the last attempt: no loop
    job = load(db, job_id)
    assert job.status == "failed" and job.error_code == "internal" and job.attempt == 2
    with db.begin() as session:
        assert [step[1] for step in jobs.transitions(session, job_id)] == ["queued", "running", "queued",
                                                                           "running", "failed"]


def test_the_backoff_doubles_and_is_capped(settings: Settings) -> None:
    tuned = settings.model_copy(update={"retry_backoff_s": 2.0, "retry_backoff_max_s": 10.0})
    for attempt, base in ((1, 2.0), (2, 4.0), (3, 8.0), (4, 10.0), (9, 10.0)):
        assert base / 2 <= retry_delay(tuned, attempt) <= base


def test_a_database_down_at_the_claim_raises_for_the_task_to_hand_back(settings: Settings,
                                                                        tiny_model_dir: Path) -> None:
    down = Runtime(settings.model_copy(update={"database_url": "postgresql+psycopg2://postgres@127.0.0.1:1/x",
                                               "model_dir": tiny_model_dir}))
    with pytest.raises(Exception) as caught:
        run_generation("any-job", down)
    assert is_unavailable(caught.value)
    down.db.engine.dispose()
