"""Style LoRA training on the tiny model, CPU, one torch thread: the trainer itself, then a training from job id to
ready version without Celery (real PostgreSQL, real storage, the model through ``from_pretrained``)."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from sqlalchemy import select

from shared import tasks, training
from shared.db import Database
from shared.errors import CancelReason
from shared.lora_files import inspect_lora
from shared.models import Style, StyleVersion, TrainingImage
from shared.queue import Publisher, make_celery
from shared.settings import Settings
from shared.storage import Storage
from tests.helpers import active_version, add_job, encode_png, load, new_client, request_doc, style_version
from worker import pipeline
from worker.generation import run_generation
from worker.pipeline.engine import Engine, GenerationRequest
from worker.pipeline.lora import LoraRequest
from worker.runtime import Runtime
from worker.training import checkpoints, stop
from worker.training.run import run_training
from worker.training.trainer import Example, LoraTrainer, TrainerOptions, TrainingParams

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

CAPTIONS = ["a red barn in ink", "a lighthouse in ink", "two cats in ink", "a bicycle in ink"]
CPU = TrainerOptions(device="cpu", num_threads=1)
BASE: dict[str, Any] = {"prompt": "a garden in spring", "negative_prompt": None, "width": 64, "height": 64,
                        "steps": 2, "guidance_scale": 5.0, "seed": 11, "num_images": 1}


def pictures() -> list[Image.Image]:
    """Four different pictures (sizes too: the trainer scales and crops each to the resolution)."""
    rng = np.random.default_rng(7)
    sizes = [(80, 64), (64, 96), (72, 72), (128, 80)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


def examples() -> list[Example]:
    return [Example(image, caption) for image, caption in zip(pictures(), CAPTIONS, strict=True)]


def params(**changes: Any) -> TrainingParams:
    values: dict[str, Any] = {"rank": 4, "alpha": 8, "steps": 10, "learning_rate": 5e-3, "resolution": 64, "seed": 3,
                              "batch_size": 1}
    return TrainingParams(**{**values, **changes})


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def base_dir(model_dir: Path) -> Path:
    return pipeline.resolve_profile("tiny", model_dir).base_dir


def lora_tensors(trainer: LoraTrainer) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in trainer.checkpoint().lora.items()}


# --- The trainer ----------------------------------------------------------------------------------------------------


def test_ten_steps_with_finite_loss_give_a_lora_that_loads_into_a_fresh_pipeline_and_changes_its_output(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    trainer = LoraTrainer.load(base_dir(tiny_model_dir), examples(), params(), "fp", CPU)
    before = lora_tensors(trainer)
    assert before
    assert all(".lora_A." in name or ".lora_B." in name for name in before)
    # Every attention projection of the UNet is adapted: to_q, to_k, to_v and to_out.0 of every Attention module.
    from diffusers.models.attention_processor import Attention

    projections = {name.split(".lora_")[0].removesuffix(".base_layer") for name in before}
    attentions = [name for name, module in trainer.unet.named_modules() if isinstance(module, Attention)]
    assert len(attentions) > 10
    assert projections == {f"{a}.{p}" for a in attentions for p in ("to_q", "to_k", "to_v", "to_out.0")}
    steps: list[tuple[int, float]] = []
    assert trainer.run(lambda step, loss: steps.append((step, loss)) is None)
    assert [step for step, _ in steps] == list(range(1, 11))
    assert all(math.isfinite(loss) and loss > 0 for _, loss in steps)
    after = lora_tensors(trainer)
    assert all(not torch.equal(before[name], after[name]) for name in before)  # every LoRA tensor learned

    path = trainer.save_lora(tmp_path / "ink.safetensors")
    info = inspect_lora(path)
    assert info.rank == 4
    assert info.alpha == 8.0
    assert info.text_encoder is False  # alpha read from the adapter metadata
    with safe_open(str(path), framework="pt") as handle:
        metadata = json.loads((handle.metadata() or {})["lora_adapter_metadata"])
    assert (metadata["unet.r"], metadata["unet.lora_alpha"]) == (4, 8)
    assert metadata["unet.target_modules"] == sorted(["to_q", "to_k", "to_v", "to_out.0"])

    engine = Engine.load(pipeline.resolve_profile("tiny", tiny_model_dir), device="cpu", num_threads=1)
    data = path.read_bytes()
    style = LoraRequest(key=hashlib.sha256(data).hexdigest(), scale=1.0, fetch=lambda: data)
    baseline = np.asarray(engine.generate(GenerationRequest(**BASE))[0], dtype=np.int16)
    styled = np.asarray(engine.generate(GenerationRequest(**BASE, lora=style))[0], dtype=np.int16)
    assert float(np.abs(styled - baseline).mean()) > 2


def test_a_resumed_training_takes_exactly_the_steps_of_an_uninterrupted_one(tiny_model_dir: Path) -> None:
    base = base_dir(tiny_model_dir)
    straight = LoraTrainer.load(base, examples(), params(steps=6, batch_size=2), "fp", CPU)
    straight_losses: list[float] = []
    straight.run(lambda _, loss: straight_losses.append(loss) is None)

    first = LoraTrainer.load(base, examples(), params(steps=6, batch_size=2), "fp", CPU)
    first.run(lambda step, _: step < 3)
    data = checkpoints.to_bytes(first.checkpoint())
    names = list(load_safetensors(data))  # one safetensors object: tensors, and JSON in its header (no pickle)
    assert any(name.startswith("optimizer.") for name in names)
    assert any(n.startswith("lora.") for n in names)
    resumed = LoraTrainer.load(base, examples(), params(steps=6, batch_size=2), "fp", CPU)
    resumed.restore(checkpoints.from_bytes(data))
    assert resumed.step == 3
    resumed_losses: list[float] = []
    assert resumed.run(lambda _, loss: resumed_losses.append(loss) is None)
    assert resumed_losses == straight_losses[3:]
    final, expected = lora_tensors(resumed), lora_tensors(straight)
    assert all(torch.equal(final[name], expected[name]) for name in expected)

    other = LoraTrainer.load(base, examples(), params(steps=6, batch_size=2), "another training", CPU)
    with pytest.raises(checkpoints.InvalidCheckpoint, match="another training"):
        other.restore(checkpoints.from_bytes(data))
    with pytest.raises(checkpoints.InvalidCheckpoint, match="not readable"):
        checkpoints.from_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")


def test_gradient_checkpointing_is_a_switch_that_changes_no_result(tiny_model_dir: Path) -> None:
    base = base_dir(tiny_model_dir)
    results = []
    for switch in (False, True):
        trainer = LoraTrainer.load(base, examples(), params(steps=2), "fp",
                                   TrainerOptions(device="cpu", num_threads=1, gradient_checkpointing=switch))
        assert trainer.unet.is_gradient_checkpointing is switch
        losses: list[float] = []
        trainer.run(lambda _, loss, kept=losses: kept.append(loss) is None)
        results.append((losses, lora_tensors(trainer)))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    assert all(torch.allclose(results[0][1][n], results[1][1][n], atol=1e-6) for n in results[0][1])


def test_bad_inputs_are_refused_naming_the_parameter(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="`resolution` must be a multiple of 8"):
        LoraTrainer.load(base_dir(tiny_model_dir), examples(), params(resolution=100), "fp", CPU)
    with pytest.raises(ValueError, match="`mixed_precision` bf16 needs a CUDA device"):
        LoraTrainer.load(base_dir(tiny_model_dir), examples(), params(), "fp",
                         TrainerOptions(device="cpu", mixed_precision="bf16"))
    with pytest.raises(FileNotFoundError, match="no diffusers model"):
        LoraTrainer.load(tiny_model_dir / "nowhere", examples(), params(), "fp", CPU)


# --- A training as a job, without Celery ---------------------------------------------------------------------------


@pytest.fixture
def runtime(make_runtime: Callable[..., Runtime], tiny_model_dir: Path) -> Iterator[Runtime]:
    runtime = make_runtime(model_dir=tiny_model_dir, torch_threads=1, progress_interval_s=0.0,
                           training_checkpoint_every=4)
    runtime.worker_name = "train@test:1"
    yield runtime
    stop.reset()


@pytest.fixture
def publisher(settings: Settings) -> Publisher:
    return Publisher(make_celery(settings, "training-test", producer=True))


def queue_training(db: Database, storage: Storage, name: str = "ink", client_id: str | None = None,
                   **changes: Any) -> str:
    """A queued training with its four pictures stored, as the API leaves it."""
    values = {**params(**changes).__dict__}
    if client_id is None:
        client_id = new_client(db)
    with db.begin() as session:
        row = training.new_training(session, client_id, name, values, base_profile="tiny",
                                    queue=tasks.QUEUE_TRAINING)
        for index, (image, caption) in enumerate(zip(pictures(), CAPTIONS, strict=True)):
            data = encode_png(image)
            key = training.image_key(row.style_id, row.version, index)
            storage.put(key, data, "image/png")
            session.add(TrainingImage(style_id=row.style_id, version=row.version, index=index, source="upload",
                                      caption=caption, user_id="u1", storage_key=key,
                                      sha256=hashlib.sha256(data).hexdigest(), width=image.width,
                                      height=image.height))
        assert row.job_id is not None
        return row.job_id


def when_step(db: Database, job_id: str, step: int, then: Any) -> threading.Thread:
    """Call ``then()`` once the running training has recorded ``step`` (a deadline loop on the row)."""

    def watch() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            row = style_version(db, job_id)
            if row.status == "running" and (row.progress_step or 0) >= step:
                then()
                return
            time.sleep(0.02)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_a_training_records_progress_and_loss_and_becomes_the_active_version_used_by_generation(
        runtime: Runtime, db: Database, publisher: Publisher) -> None:
    job_id = queue_training(db, runtime.storage)
    seen: list[tuple[int | None, float | None]] = []
    done = threading.Event()

    def sample() -> None:  # progress and loss as a client polling the row sees them
        while not done.is_set():
            row = style_version(db, job_id)
            if row.status == "running":
                seen.append((row.progress_step, row.loss))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        assert run_training(job_id, runtime, publisher) == "ready"
    finally:
        done.set()
        sampler.join()
    row = style_version(db, job_id)
    assert row.status == "ready"
    assert row.attempt == 1
    assert row.progress_step == 10
    assert row.progress_total == 10
    assert row.loss is not None
    assert math.isfinite(row.loss)
    assert (row.rank, row.alpha) == (4, 8.0)
    assert any(step and 0 < step < 10 and loss is not None for step, loss in seen)  # progress while it ran
    data = runtime.storage.get(row.storage_key or "")
    assert hashlib.sha256(data).hexdigest() == row.sha256
    assert row.size_bytes == len(data)
    assert row.storage_key == f"styles/{row.style_id}/1/lora.safetensors"
    assert not runtime.storage.exists(training.checkpoint_key(row.style_id, 1))  # checkpoints go when it is done
    assert active_version(db, row.style_id) == 1
    assert row.base_profile == "tiny"

    # A generation names the style by name and by name@1: the trained LoRA runs and the job records the version.
    with db.begin() as session:
        client_id = session.get_one(Style, row.style_id).client_id
    for ref in ({"name": "ink", "version": None}, {"name": "ink", "version": 1}):
        doc = {**request_doc(), "resolved": {"identity": [], "style": None, "style_lora": ref}}
        gen = add_job(db, request=doc, client_id=client_id, seed=5)
        assert run_generation(gen, runtime) == "succeeded"
        assert (load(db, gen).model or {})["style_lora"] == "ink@1"


def test_sigterm_checkpoints_and_gives_it_back_and_the_next_attempt_continues_the_count(
        runtime: Runtime, db: Database, publisher: Publisher, caplog: pytest.LogCaptureFixture) -> None:
    runtime.settings = runtime.settings.model_copy(update={"training_checkpoint_every": 1000})  # only the stop's
    job_id = queue_training(db, runtime.storage, steps=24)
    uninterrupted = queue_training(db, runtime.storage, name="reference", steps=24)
    assert run_training(uninterrupted, runtime, publisher) == "ready"

    asked = when_step(db, job_id, 5, stop.request_stop)
    assert run_training(job_id, runtime, publisher) == "requeued"
    asked.join()
    row = style_version(db, job_id)
    stopped_at = row.checkpoint_step
    assert stopped_at is not None
    assert 5 <= stopped_at < 24
    assert (row.status, row.requeues, row.progress_step) == ("queued", 1, stopped_at)
    assert row.published_at is not None  # published again at once (the relay would otherwise)
    assert runtime.storage.exists(training.checkpoint_key(row.style_id, row.version))

    stop.reset()  # the next worker process
    with caplog.at_level(logging.INFO, logger="worker.training.run"):
        assert run_training(job_id, runtime, publisher) == "ready"
    assert f"resumes from the checkpoint at step {stopped_at} (attempt 2)" in caplog.text
    row = style_version(db, job_id)
    assert (row.status, row.attempt, row.progress_step) == ("ready", 2, 24)
    # The resumed training took exactly the steps the uninterrupted one took: the same LoRA, bit for bit.
    reference = style_version(db, uninterrupted)
    resumed = load_safetensors(runtime.storage.get(row.storage_key or ""))
    expected = load_safetensors(runtime.storage.get(reference.storage_key or ""))
    assert resumed.keys() == expected.keys()  # (not the files' bytes: safetensors orders its header at random)
    assert all(torch.equal(resumed[name], expected[name]) for name in expected)


def test_cancel_stops_a_running_training_and_leaves_the_active_version(runtime: Runtime, db: Database,
                                                                      publisher: Publisher) -> None:
    first = queue_training(db, runtime.storage)
    assert run_training(first, runtime, publisher) == "ready"
    with db.begin() as session:
        client_id = session.execute(select(Style.client_id).join(StyleVersion).where(
            StyleVersion.job_id == first)).scalar_one()
    job_id = queue_training(db, runtime.storage, client_id=client_id, steps=500)
    row = style_version(db, job_id)
    asked = when_step(db, job_id, 2, lambda: _cancel(db, row.style_id, row.version))
    assert run_training(job_id, runtime, publisher) == "canceled"
    asked.join()
    row = style_version(db, job_id)
    assert (row.status, row.error_code) == ("canceled", "canceled_by_client")
    assert row.progress_step is not None
    assert row.progress_step < 500
    assert active_version(db, row.style_id) == 1
    assert not runtime.storage.exists(training.checkpoint_key(row.style_id, row.version))


def _cancel(db: Database, style_id: str, number: int) -> None:
    with db.begin() as session:
        assert training.cancel(session, style_id, number, CancelReason.CANCELED_BY_CLIENT) == "flagged"


def test_a_missing_picture_or_missing_weights_fail_the_version(runtime: Runtime, db: Database,
                                                               publisher: Publisher, tmp_path: Path) -> None:
    job_id = queue_training(db, runtime.storage)
    row = style_version(db, job_id)
    runtime.storage.delete(training.image_key(row.style_id, row.version, 2))
    assert run_training(job_id, runtime, publisher) == "failed:reference_invalid"
    row = style_version(db, job_id)
    assert (row.status, row.error_message) == ("failed", "images.2 is no longer stored")

    bare = Runtime(runtime.settings.model_copy(update={"model_dir": tmp_path / "no-model"}))
    job_id = queue_training(db, runtime.storage)
    assert run_training(job_id, bare, publisher) == "failed:setup_failed"
    assert "illustrations models check" in (style_version(db, job_id).error_message or "")
    bare.db.engine.dispose()
    assert run_training(job_id, runtime, publisher) == "skipped:terminal"  # a re-delivery is dropped


def test_out_of_memory_in_a_training_step_fails_the_version_out_of_memory(runtime: Runtime, db: Database,
                                                                         publisher: Publisher) -> None:
    from diffusers import UNet2DConditionModel

    def out_of_memory(module: torch.nn.Module, *_: object) -> None:
        if isinstance(module, UNet2DConditionModel):  # inside the real training step's UNet call
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    job_id = queue_training(db, runtime.storage)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(out_of_memory)
    try:
        assert run_training(job_id, runtime, publisher) == "failed:out_of_memory"
    finally:
        handle.remove()
    row = style_version(db, job_id)
    assert row.error_message == "the GPU ran out of memory; try a lower resolution or batch_size"


def test_the_training_task_has_its_own_time_limits_and_generation_keeps_its_own() -> None:
    import worker.tasks.generate
    import worker.tasks.train  # noqa: F401 - registers the task, as a worker's `include` does
    from shared.settings import get_settings
    from worker.celery_app import app

    settings = get_settings()
    train = app.tasks[tasks.TRAIN]  # the worker's app, its settings applied as when a worker starts
    assert (train.soft_time_limit, train.time_limit) == (settings.training_soft_time_limit_s,
                                                         settings.training_time_limit_s)
    generate = app.tasks[tasks.GENERATE]
    assert (generate.soft_time_limit, generate.time_limit) == (settings.task_soft_time_limit_s,
                                                               settings.task_time_limit_s)
    assert settings.training_soft_time_limit_s > settings.task_time_limit_s
