"""One generation from job id to finished row, without Celery: real database, real storage, the tiny model."""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
from billiard.exceptions import SoftTimeLimitExceeded
from PIL import Image
from sqlalchemy import select

from shared import faces, jobs, styles
from shared.db import Database, is_unavailable
from shared.models import Client, JobImage
from shared.settings import Settings
from tests.helpers import add_job, load, metric_rows, request_doc, wait_for
from worker import limits
from worker.attempt import retry_delay
from worker.generation import run_generation
from worker.runtime import Runtime

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def stored_images(db: Database, job_id: str) -> list[JobImage]:
    with db.begin() as session:
        return list(session.execute(select(JobImage).where(JobImage.job_id == job_id)).scalars())


def test_a_job_runs_to_succeeded_with_its_images_stored(runtime: Runtime, db: Database) -> None:
    job_id = add_job(db, request=request_doc(width=64, height=96, num_images=2), seed=7)
    assert run_generation(job_id, runtime) == "succeeded"
    job = load(db, job_id)
    assert job.status == "succeeded"
    assert job.attempt == 1
    assert job.finished_at is not None
    assert job.progress_step == job.progress_total == 2
    assert job.timings is not None
    assert set(job.timings) == {"queued_s", "inference_s", "total_s"}
    assert job.model is not None
    assert job.model["profile"] == "tiny"
    assert job.model["revision"].startswith("tiny-")
    images = stored_images(db, job_id)
    assert [image.index for image in images] == [0, 1]
    for image in images:
        assert image.storage_key == f"jobs/{job_id}/1/{image.index}.png"
        data = runtime.storage.get(image.storage_key)
        decoded = Image.open(io.BytesIO(data))
        assert decoded.format == "PNG"
        assert decoded.size == (64, 96)
        assert image.size_bytes == len(data)
        assert not decoded.info.get("prompt")
        assert not getattr(decoded, "text", {})  # no memoir text in files


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
    assert job.status == "failed"
    assert job.error_code == "reference_invalid"
    assert stored_images(db, job_id) == []


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
    assert job.error_message is not None
    assert "make-tiny" in job.error_message
    assert str(tmp_path / "nothing-here") in job.error_message
    runtime.db.engine.dispose()


def test_cancel_while_running_stops_and_stores_nothing(runtime: Runtime, db: Database) -> None:
    runtime.settings = runtime.settings.model_copy(update={"progress_interval_s": 0.0})
    job_id = add_job(db, request=request_doc(steps=100))
    outcome: list[str] = []
    worker = threading.Thread(target=lambda: outcome.append(run_generation(job_id, runtime)))
    worker.start()

    def stepping() -> bool:
        job = load(db, job_id)
        return job.status == "running" and bool(job.progress_step)

    wait_for(stepping, 30, "a step of the running job", interval_s=0.01)
    with db.begin() as session:
        assert jobs.request_cancel(session, job_id)
    worker.join(60)
    assert outcome == ["canceled"]
    job = load(db, job_id)
    assert job.status == "canceled"
    assert job.error_code == "canceled_by_client"
    assert job.progress_step is not None
    assert job.progress_step < 100
    assert stored_images(db, job_id) == []
    assert not runtime.storage.exists(f"jobs/{job_id}/1/0.png")


# --- Styles (LoRA), embeddings, faults, metrics -------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_file(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.pipeline.tiny import make_tiny_lora

    return make_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("lora") / "watercolor.safetensors", seed=5)


def client_with_style(runtime: Runtime, db: Database, lora_file: Path, profile: str = "tiny") -> str:
    with db.begin() as session:
        client = Client(name=f"styled-{uuid.uuid4().hex[:8]}")
        session.add(client)
        session.flush()
        styles.import_version(session, runtime.storage, client.id, "watercolor", lora_file, profile)
        return client.id


def styled_doc(ref: str = "watercolor", **params: object) -> dict[str, object]:
    name, _, version = ref.partition("@")
    doc = request_doc(lora_scale=0.8, **params)
    doc["resolved"] = {"identity": [], "style": None,
                       "style_lora": {"name": name, "version": int(version) if version else None}}
    return doc


def test_a_style_runs_with_its_lora_and_says_which_version_ran(runtime: Runtime, db: Database,
                                                                lora_file: Path) -> None:
    client_id = client_with_style(runtime, db, lora_file)
    plain = add_job(db, request=request_doc(), seed=21)
    styled = add_job(db, request=styled_doc(), seed=21, client_id=client_id)
    pinned = add_job(db, request=styled_doc("watercolor@1"), seed=21, client_id=client_id)
    after = add_job(db, request=request_doc(), seed=21)
    for job_id in (plain, styled, pinned, after):
        assert run_generation(job_id, runtime) == "succeeded"
    digest = {job_id: stored_images(db, job_id)[0].sha256 for job_id in (plain, styled, pinned, after)}
    assert digest[styled] == digest[pinned] != digest[plain]
    model = load(db, styled).model
    assert model is not None
    assert model["style_lora"] == "watercolor@1"
    assert load(db, plain).model["style_lora"] is None  # type: ignore[index]
    first, second = metric_rows(db, [styled])[0], metric_rows(db, [pinned])[0]
    assert first.lora == "watercolor@1"
    assert first.lora_resident is False
    assert second.lora_resident is True
    # The job after the styled ones ran with the LoRA disabled: the plain image again (PNG of the same pixels,
    # unless float noise moved a value by one; then the hashes differ and the pixels agree within 1).
    images = [Image.open(io.BytesIO(runtime.storage.get(stored_images(db, j)[0].storage_key))) for j in (plain, after)]
    arrays = [np.asarray(image, dtype=np.int16) for image in images]
    assert np.abs(arrays[0] - arrays[1]).max() <= 1


def test_a_style_removed_before_the_job_runs_fails_style_not_found(runtime: Runtime, db: Database,
                                                                  lora_file: Path) -> None:
    client_id = client_with_style(runtime, db, lora_file)
    job_id = add_job(db, request=styled_doc(), seed=3, client_id=client_id)
    with db.begin() as session:
        prefixes = styles.remove(session, client_id, "watercolor")
    for prefix in prefixes:
        runtime.storage.delete_prefix(prefix)
    assert run_generation(job_id, runtime) == "failed:style_not_found"
    job = load(db, job_id)
    assert job.error_code == "style_not_found"
    assert job.error_message == "no style named 'watercolor'"
    assert metric_rows(db, [job_id])[0].error_code == "style_not_found"


def test_a_style_made_for_another_model_fails_style_not_found(runtime: Runtime, db: Database,
                                                             lora_file: Path) -> None:
    client_id = client_with_style(runtime, db, lora_file, profile="sdxl")
    job_id = add_job(db, request=styled_doc(), seed=3, client_id=client_id)
    assert run_generation(job_id, runtime) == "failed:style_not_found"
    assert load(db, job_id).error_message == "style watercolor@1 was made for the sdxl model, not tiny"


def reference(runtime: Runtime, key: str, color: tuple[int, int, int]) -> dict[str, object]:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buffer, format="PNG")
    runtime.storage.put(key, buffer.getvalue(), "image/png")
    return {"subject_id": key, "version": 1, "storage_key": key,
            "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}


def test_cached_embeddings_reproduce_the_uncached_image_exactly(runtime: Runtime, db: Database,
                                                                settings: Settings, tiny_model_dir: Path) -> None:
    # A person's photo as this version stores it: its face looked for (none in a flat colour) when it was stored.
    face = {**reference(runtime, "subjects/f/v1.png", (200, 150, 120)), "face_count": 0,
            "detector": faces.detector_version()}
    scene = reference(runtime, "subjects/s/v1.png", (40, 90, 160))
    doc = {**request_doc(), "resolved": {"identity": [face], "style": scene}}
    cold, warm = add_job(db, request=doc, seed=8), add_job(db, request=doc, seed=8)
    assert run_generation(cold, runtime) == "succeeded"
    revision = runtime.engine().encoder_revision
    for adapter, ref in (("identity", face), ("style", scene)):
        assert runtime.storage.exists(f"embeddings/{ref['sha256']}/{revision}/{adapter}.safetensors")
    # A fresh process: only the stored embeddings (no memory), and the photos themselves are gone.
    fresh = Runtime(runtime.settings)
    runtime.storage.delete(str(face["storage_key"]))
    runtime.storage.delete(str(scene["storage_key"]))
    assert run_generation(warm, fresh) == "succeeded"
    assert [m.embeddings_cached for m in metric_rows(db, [cold]) + metric_rows(db, [warm])] == [0, 2]
    # Without the cache (photos back in storage): the same image again.
    reference(runtime, "subjects/f/v1.png", (200, 150, 120))
    reference(runtime, "subjects/s/v1.png", (40, 90, 160))
    uncached = Runtime(runtime.settings.model_copy(update={"embedding_cache": False}))
    third = add_job(db, request=doc, seed=8)
    assert run_generation(third, uncached) == "succeeded"
    digests = {stored_images(db, job_id)[0].sha256 for job_id in (cold, warm, third)}
    assert len(digests) == 1
    for other in (fresh, uncached):
        other.db.engine.dispose()


def test_out_of_memory_fails_that_job_and_the_next_succeeds(runtime: Runtime, db: Database) -> None:
    def out_of_memory(*_: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    handle = runtime.engine().pipe.unet.register_forward_pre_hook(out_of_memory)  # inside the real pipeline call
    oom = add_job(db, request=request_doc(), seed=4)
    try:
        assert run_generation(oom, runtime) == "failed:out_of_memory"
    finally:
        handle.remove()
    job = load(db, oom)
    assert job.status == "failed"
    assert job.error_code == "out_of_memory"
    assert stored_images(db, oom) == []
    assert (metric_rows(db, [oom])[0].outcome, metric_rows(db, [oom])[0].error_code) == ("failed", "out_of_memory")
    following = add_job(db, request=request_doc(), seed=4)
    assert run_generation(following, runtime) == "succeeded"


def test_soft_time_limit_inside_the_pipeline_fails_time_limit(runtime: Runtime, db: Database) -> None:
    def soft_limit(*_: object) -> None:
        raise SoftTimeLimitExceeded()  # what Celery's SIGUSR1 handler raises in the running code

    handle = runtime.engine().pipe.unet.register_forward_pre_hook(soft_limit)
    job_id = add_job(db, request=request_doc(), seed=4)
    try:
        assert run_generation(job_id, runtime) == "failed:time_limit"
    finally:
        handle.remove()
    limit = runtime.settings.task_soft_time_limit_s
    assert load(db, job_id).error_message == f"the generation took longer than {limit} s"


def test_hard_time_limit_fails_the_job_of_this_worker_only(runtime: Runtime, db: Database) -> None:
    job_id = add_job(db, request=request_doc())
    with db.begin() as session:
        assert isinstance(jobs.started(session, job_id, "gpu0@host-a:4242", 60), jobs.Claim)
    assert not limits.GENERATION.fail(runtime, job_id, "gpu0@host")  # not this node (prefix of another)
    assert not limits.GENERATION.fail(runtime, job_id, "gpu1@host-a")
    assert limits.GENERATION.fail(runtime, job_id, "gpu0@host-a")
    job = load(db, job_id)
    assert job.status == "failed"
    assert job.error_code == "time_limit"
    assert not limits.GENERATION.fail(runtime, job_id, "gpu0@host-a")  # terminal: unchanged


@contextlib.contextmanager
def at_unet_call(runtime: Runtime, number: int, action: Callable[[], object]) -> Iterator[list[int]]:
    """Run ``action`` as the pipeline's ``number``-th UNet call starts (one call per step: guidance is batched);
    yields the count of calls so far."""
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1
        if calls[0] == number:
            action()

    handle = runtime.engine().pipe.unet.register_forward_pre_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


@contextlib.contextmanager
def decodes(runtime: Runtime, action: Callable[[], object] = lambda: None) -> Iterator[list[int]]:
    """Counts the VAE decoder's runs (a hook on the decoder module that ``vae.decode`` calls); ``action`` runs as
    each starts."""
    count = [0]

    def hook(*_: object) -> None:
        count[0] += 1
        action()

    handle = runtime.engine().pipe.vae.decoder.register_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def test_a_cancel_stops_at_the_next_step_without_decoding(runtime: Runtime, db: Database) -> None:
    runtime.settings = runtime.settings.model_copy(update={"progress_interval_s": 0.0})
    job_id = add_job(db, request=request_doc(steps=10))

    def written(step: int) -> None:
        wait_for(lambda: (load(db, job_id).progress_step or 0) >= step, 30, f"step {step} written")

    def cancel() -> None:  # as step 3 starts, once the watch has written step 2 (it read no cancel then)
        written(2)
        with db.begin() as session:
            jobs.request_cancel(session, job_id)

    # The watch's next write, step 3's, reads the cancel (known before its commit): step 4 is the last to run.
    with (at_unet_call(runtime, 3, cancel) as calls, at_unet_call(runtime, 4, lambda: written(3)),
          decodes(runtime) as decoded):
        assert run_generation(job_id, runtime) == "canceled"
    assert calls == [4]  # the step that learned of the cancel finished; no step after it
    assert decoded == [0]  # and no VAE decode
    job = load(db, job_id)
    assert (job.status, job.error_code) == ("canceled", "canceled_by_client")
    assert stored_images(db, job_id) == []
    assert runtime.storage.delete_prefix(f"jobs/{job_id}/") == 0
    assert metric_rows(db, [job_id])[0].outcome == "canceled"


def test_progress_is_written_by_the_lease_watch_thread_never_by_the_denoising_loop(runtime: Runtime,
                                                                                   db: Database) -> None:
    from sqlalchemy import event

    runtime.settings = runtime.settings.model_copy(update={"progress_interval_s": 0.0})
    job_id = add_job(db, request=request_doc(steps=6))
    denoising = threading.current_thread().name  # run_generation runs the pipeline in this thread
    in_loop = [False]
    statements: list[tuple[str, bool]] = []  # (thread, whether it writes progress), while the loop runs

    def executed(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if in_loop[0]:
            statements.append((threading.current_thread().name, "progress_step" in statement))

    def loop(running: bool) -> Callable[[], None]:
        return lambda: in_loop.__setitem__(0, running)

    def step_2_written() -> None:
        wait_for(lambda: (load(db, job_id).progress_step or 0) >= 2, 30, "step 2 written")

    event.listen(runtime.db.engine, "before_cursor_execute", executed)
    try:
        with (at_unet_call(runtime, 1, loop(True)), at_unet_call(runtime, 4, step_2_written),
              decodes(runtime, loop(False)) as decoded):
            assert run_generation(job_id, runtime) == "succeeded"
    finally:
        event.remove(runtime.db.engine, "before_cursor_execute", executed)
    assert decoded == [1]
    assert [name for name, _ in statements if name == denoising] == []  # no round trip from the loop
    assert any(progress and name.startswith("heartbeat-") for name, progress in statements)
    job = load(db, job_id)
    assert job.progress_step == job.progress_total == 6


def test_a_metrics_row_says_where_the_time_went(runtime: Runtime, db: Database) -> None:
    runtime.worker_name = "gpu3@metrics-host:77"
    runtime.gpu = "3"
    job_id = add_job(db, request=request_doc(width=64, height=96, num_images=2), seed=9, user_id="u-metrics")
    assert run_generation(job_id, runtime) == "succeeded"
    (row,) = metric_rows(db, [job_id])
    assert row.outcome == "succeeded"
    assert row.attempt == 1
    assert row.user_id == "u-metrics"
    assert row.queue == "illustrations.interactive"
    assert row.steps == 2
    assert row.width == 64
    assert row.height == 96
    assert row.num_images == 2
    assert row.profile == "tiny"
    assert row.revision == runtime.engine().revision
    assert row.worker == "gpu3@metrics-host:77"
    assert row.gpu == "3"
    assert row.device == "cpu"
    assert row.peak_gpu_memory_bytes is None  # CPU
    assert row.model_load_s is not None
    assert row.model_load_s > 0
    assert row.identity_refs == 0
    assert row.style_ref is False
    assert row.lora is None
    assert row.embeddings_cached == 0
    assert row.queue_wait_s >= 0
    assert row.load_s is not None
    assert row.inference_s is not None
    assert row.store_s is not None
    assert row.total_s >= row.inference_s + row.load_s + row.store_s


def test_the_jobs_timings_and_its_metrics_row_tell_the_same_attempt(runtime: Runtime, db: Database) -> None:
    job_id = add_job(db, request=request_doc(), seed=9)
    assert run_generation(job_id, runtime) == "succeeded"
    timings = load(db, job_id).timings
    (row,) = metric_rows(db, [job_id])
    assert timings is not None
    assert row.inference_s is not None
    assert timings["queued_s"] == round(row.queue_wait_s, 3)
    assert timings["inference_s"] == round(row.inference_s, 3)
    # The job's total (from its creation) is taken as it finishes; the metrics row's runs to the end of the finish.
    assert timings["total_s"] <= round(row.queue_wait_s + row.total_s, 3)
    assert timings["total_s"] > timings["queued_s"] + timings["inference_s"]


def test_a_worker_stopping_mid_job_gives_it_back_to_run_again_at_once(runtime: Runtime, db: Database) -> None:
    runtime.settings = runtime.settings.model_copy(update={"progress_interval_s": 0.0})
    job_id = add_job(db, request=request_doc(steps=10))
    # Celery's soft shutdown ran out of grace while step 3 runs (worker.lifecycle sets the flag).
    with at_unet_call(runtime, 3, runtime.stopping.set) as calls:
        assert run_generation(job_id, runtime) == "requeued:shutdown"
    assert calls == [3]  # no step after the one that saw the stop
    job = load(db, job_id)
    assert (job.status, job.published_at, job.not_before) == ("queued", None, None)  # no backoff: not its fault
    with db.begin() as session:
        assert jobs.transitions(session, job_id)[-1][3] == "shutdown"
    assert [(m.outcome, m.error_code) for m in metric_rows(db, [job_id])] == [("requeued", "shutdown")]
    assert stored_images(db, job_id) == []


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
    assert job.status == "queued"
    assert job.attempt == 1
    assert job.published_at is None
    assert job.not_before is not None
    assert job.not_before > datetime.now(UTC) + timedelta(seconds=10)  # backoff
    assert run_generation(job_id, runtime) == "failed:internal"  # the last attempt: no loop
    job = load(db, job_id)
    assert job.status == "failed"
    assert job.error_code == "internal"
    assert job.attempt == 2
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


def test_a_job_with_a_malformed_request_fails_internal_once(runtime: Runtime, db: Database) -> None:
    job_id = add_job(db, request={"prompt": "p", "params": {"steps": 2}})  # no size, no scales: a poison job
    assert run_generation(job_id, runtime) == "failed:internal"
    job = load(db, job_id)
    assert job.status == "failed"
    assert job.error_code == "internal"
    assert job.attempt == 1
    assert [(m.outcome, m.error_code, m.width) for m in metric_rows(db, [job_id])] == [("failed", "internal", 0)]
