"""One training, from a job id to a ready style version: claim, read the set, train, store, register (fenced).

The task shell (``worker.tasks.train``) only calls ``run_training``; everything here is plain code over the
database, storage and the trainer, so it is testable without Celery.

While it trains, a heartbeat thread renews the lease (``worker.leases``); after each step the loop records progress
and the mean loss (at most every ``progress_interval_s``, reading the cancel flag with it), writes a checkpoint every
``training_checkpoint_every`` steps, and stops when the client canceled (``canceled``), another attempt owns the
training (``lost``), or the worker got SIGTERM (checkpoint, back to the queue, published again: ``requeued``). A
later attempt resumes from the checkpoint, its progress continuing from that step.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import PIL.Image
from billiard.exceptions import SoftTimeLimitExceeded
from sqlalchemy import select

from shared import styles, tasks, training
from shared.errors import ErrorCode, JobFailure
from shared.lora_files import inspect_lora
from shared.models import TrainingImage
from shared.queue import Publisher
from shared.storage import ObjectNotFound, StorageError
from worker import limits
from worker.leases import LeaseWatch
from worker.runtime import Runtime
from worker.training import checkpoints
from worker.training.stop import stop_requested

if TYPE_CHECKING:
    from worker.training.trainer import Example, LoraTrainer, TrainingParams

log = logging.getLogger(__name__)

CHECKPOINT_CONTENT_TYPE = "application/octet-stream"


class Watch(LeaseWatch[training.TrainingClaim]):
    """The lease watch of a training, from the claim on (loading a model takes a while too); after each step it
    records progress and the mean loss, writes checkpoints, and says when to stop.

    ``stop_reason``: ``canceled`` (the client asked), ``lost`` (another attempt owns the training now) or
    ``stopping`` (SIGTERM).
    """

    def __init__(self, runtime: Runtime, claim: training.TrainingClaim, total: int) -> None:
        super().__init__(runtime, claim, training.heartbeat, "training")
        self.total = total
        self.trainer: LoraTrainer | None = None  # set once loaded
        self.losses: list[float] = []
        self.last_loss: float | None = None

    def mean_loss(self) -> float | None:
        if self.losses:
            self.last_loss = sum(self.losses) / len(self.losses)
            self.losses.clear()
        return self.last_loss

    def on_step(self, step: int, loss: float) -> bool:
        """After each step: checkpoint every N steps, progress at most every interval; False to stop."""
        settings = self.runtime.settings
        self.losses.append(loss)
        if step < self.total and step % settings.training_checkpoint_every == 0:
            self.save_checkpoint()
        if step < self.total and self.progress_due():
            self.renew(step=step, loss=self.mean_loss())
        return self.go_on()

    def go_on(self) -> bool:
        """Whether to keep training: nobody canceled it, it still holds its lease, and the worker is not stopping."""
        if stop_requested():
            self.stop("stopping")
        return self.stop_reason is None

    def save_checkpoint(self) -> None:
        """Store the trainer's state as the version's checkpoint, then record its step (fenced)."""
        assert self.trainer is not None
        data = checkpoints.to_bytes(self.trainer.checkpoint())
        key = training.checkpoint_key(self.claim.style_id, self.claim.version)
        self.runtime.storage.put(key, data, CHECKPOINT_CONTENT_TYPE)
        with self.runtime.db.begin() as session:
            if not training.checkpointed(session, self.claim, self.trainer.step):
                self.stop_reason = "lost"
                return
        log.info("training %s: checkpoint at step %d of %d", self.claim.job_id, self.trainer.step, self.total)


# --- 1. The training set ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSet:
    examples: list[Example]
    fingerprint: str


def _read_set(runtime: Runtime, claim: training.TrainingClaim, params: TrainingParams) -> TrainingSet:
    from worker.training.trainer import Example, fingerprint

    with runtime.db.begin() as session:
        rows = list(session.execute(
            select(TrainingImage.index, TrainingImage.storage_key, TrainingImage.sha256, TrainingImage.caption)
            .where(TrainingImage.style_id == claim.style_id, TrainingImage.version == claim.version)
            .order_by(TrainingImage.index)
        ))
    if not rows:
        raise JobFailure(ErrorCode.REFERENCE_INVALID, "the training set has no pictures")
    examples, identity = [], []
    for row in rows:
        if row.storage_key is None:
            raise JobFailure(ErrorCode.REFERENCE_INVALID, f"images.{row.index} was never stored")
        try:
            data = runtime.storage.get(row.storage_key)
            image = PIL.Image.open(io.BytesIO(data), formats=["PNG"])
            image.load()
        except ObjectNotFound:
            raise JobFailure(ErrorCode.REFERENCE_INVALID, f"images.{row.index} is no longer stored") from None
        except (OSError, SyntaxError, ValueError):
            raise JobFailure(ErrorCode.REFERENCE_INVALID, f"images.{row.index} cannot be decoded") from None
        examples.append(Example(image.convert("RGB"), row.caption))
        identity.append((row.sha256 or "", hashlib.sha256(row.caption.encode()).hexdigest()))
    return TrainingSet(examples, fingerprint(params, identity))


# --- 2. The trainer, resumed from a checkpoint when there is one ---------------------------------------------------


def _params(claim: training.TrainingClaim) -> TrainingParams:
    from worker.training.trainer import TrainingParams

    p = claim.params
    return TrainingParams(rank=int(p["rank"]), alpha=int(p["alpha"]), steps=int(p["steps"]),
                          learning_rate=float(p["learning_rate"]), resolution=int(p["resolution"]),
                          seed=int(p["seed"]), batch_size=int(p.get("batch_size", 1)))


def _trainer(runtime: Runtime, params: TrainingParams, data: TrainingSet) -> LoraTrainer:
    from worker.pipeline.profiles import locate_profile, missing_files
    from worker.training.trainer import LoraTrainer, TrainerOptions

    settings = runtime.settings
    profile = locate_profile(settings.model_profile, settings.effective_model_dir,
                             explicit=settings.model_dir is not None)
    missing = [path for path in missing_files(profile) if path.startswith("base/")]
    if missing:
        raise JobFailure(ErrorCode.SETUP_FAILED, f"the {profile.name} weights are missing on the training worker "
                                                 f"({len(missing)} file(s), e.g. {missing[0]}); run "
                                                 f"`illustrations models check` there")
    options = TrainerOptions(device=settings.device, mixed_precision=settings.training_mixed_precision,
                             gradient_checkpointing=settings.training_gradient_checkpointing,
                             num_threads=settings.torch_threads)
    return LoraTrainer.load(profile.base_dir, data.examples, params, data.fingerprint, options)


def _resume(runtime: Runtime, claim: training.TrainingClaim, trainer: LoraTrainer) -> None:
    if not claim.checkpoint_step:
        return
    key = training.checkpoint_key(claim.style_id, claim.version)
    try:
        trainer.restore(checkpoints.from_bytes(runtime.storage.get(key)))
    except (ObjectNotFound, checkpoints.InvalidCheckpoint) as exc:
        log.warning("training %s: the checkpoint of step %d cannot be used (%s); starting over", claim.job_id,
                    claim.checkpoint_step, type(exc).__name__)
        return
    log.info("training %s resumes from the checkpoint at step %d (attempt %d)", claim.job_id, trainer.step,
             claim.attempt)


# --- 3. The result ------------------------------------------------------------------------------------------------


def _store_result(runtime: Runtime, claim: training.TrainingClaim, trainer: LoraTrainer,
                  loss: float | None) -> bool:
    with tempfile.TemporaryDirectory(prefix="trained-") as folder:
        path = trainer.save_lora(Path(folder) / "lora.safetensors")
        info = inspect_lora(path)
        data = path.read_bytes()
    key = styles.storage_key(claim.style_id, claim.version)
    runtime.storage.put(key, data, styles.LORA_CONTENT_TYPE)
    with runtime.db.begin() as session:
        won = training.ready(session, claim, storage_key=key, sha256=hashlib.sha256(data).hexdigest(),
                             size_bytes=len(data), rank=info.rank, alpha=info.alpha,
                             base_profile=runtime.settings.model_profile, loss=loss)
    if won:
        runtime.storage.delete(training.checkpoint_key(claim.style_id, claim.version))
    return won


def _give_back(runtime: Runtime, publisher: Publisher, claim: training.TrainingClaim, *, stopping: bool) -> bool:
    with runtime.db.begin() as session:
        moved = training.requeued(session, claim, stopping=stopping)
    if moved and publisher.send(tasks.TRAIN, claim.job_id, tasks.QUEUE_TRAINING):
        with runtime.db.begin() as session:
            training.mark_published(session, claim.job_id)
    return moved


def run_training(job_id: str, runtime: Runtime, publisher: Publisher) -> str:
    """Run one training to its end (or give it back); returns what happened, for the worker log."""
    from worker.training.trainer import TrainingDiverged

    settings = runtime.settings
    # 1. Claim: only a queued version on the training queue runs; a re-delivery is dropped here.
    with runtime.db.begin() as session:
        claim = training.claim(session, job_id, runtime.worker_name, settings.lease_s)
    if not isinstance(claim, training.TrainingClaim):
        log.info("training %s not run: %s", job_id, claim)
        return f"skipped:{claim}"

    def fail(code: ErrorCode, message: str) -> str:
        with runtime.db.begin() as session:
            training.failed(session, claim, code, message)
        runtime.storage.delete(training.checkpoint_key(claim.style_id, claim.version))
        log.warning("training %s failed: %s", job_id, code.value)
        return f"failed:{code.value}"

    params = _params(claim)
    log.info("training %s started (attempt %d): %d steps, rank %d", job_id, claim.attempt, params.steps, params.rank)
    try:
        with Watch(runtime, claim, params.steps) as watch:
            # 2. Read the pictures, load the base model, resume from the checkpoint if there is one.
            data = _read_set(runtime, claim, params)
            trainer = watch.trainer = _trainer(runtime, params, data)
            _resume(runtime, claim, trainer)
            # 3. Train, recording progress and checkpoints; stop on cancel, loss of the lease, or SIGTERM.
            finished = watch.go_on() and trainer.run(watch.on_step)
            if watch.stop_reason == "stopping":
                watch.save_checkpoint()
        loss = watch.mean_loss()
        if finished and watch.stop_reason in (None, "stopping"):
            # 4. Store the LoRA (with its adapter metadata) and register it as the version, fenced.
            if not _store_result(runtime, claim, trainer, loss):
                log.warning("training %s: attempt %d lost the training before finishing", job_id, claim.attempt)
                return "lost"
            log.info("training %s ready after %d steps (loss %.4f)", job_id, trainer.step, loss or float("nan"))
            return "ready"
        if watch.stop_reason == "canceled":
            with runtime.db.begin() as session:
                training.canceled_running(session, claim)
            runtime.storage.delete(training.checkpoint_key(claim.style_id, claim.version))
            log.info("training %s canceled at step %d", job_id, trainer.step)
            return "canceled"
        if watch.stop_reason == "stopping" and _give_back(runtime, publisher, claim, stopping=True):
            log.warning("training %s given back at step %d: the worker is stopping", job_id, trainer.step)
            return "requeued"
        log.warning("training %s: attempt %d lost the training at step %d", job_id, claim.attempt, trainer.step)
        return "lost"
    except JobFailure as exc:
        return fail(exc.code, exc.message)
    except TrainingDiverged as exc:
        return fail(ErrorCode.INTERNAL, str(exc))
    except SoftTimeLimitExceeded:
        return fail(ErrorCode.TIME_LIMIT, f"the training took longer than {settings.training_soft_time_limit_s} s")
    except StorageError:
        if claim.attempt - claim.requeues < settings.max_attempts:
            _give_back(runtime, publisher, claim, stopping=False)
            log.warning("training %s given back after a storage fault", job_id)
            return "requeued:storage"
        return fail(ErrorCode.INTERNAL, "the store kept failing")
    except Exception as exc:
        if limits.is_out_of_memory(exc):
            return fail(ErrorCode.OUT_OF_MEMORY, "the GPU ran out of memory; try a lower resolution or batch_size")
        # The exception type only: a message could echo a caption.
        log.error("training %s: unexpected %s", job_id, type(exc).__name__, exc_info=settings.log_level == "DEBUG")
        return fail(ErrorCode.INTERNAL, "an unexpected error occurred while training")
