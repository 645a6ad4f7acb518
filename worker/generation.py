"""One generation, from a job id to a finished row: claim, read references, run, store, finish (fenced).

The task shell (``worker.tasks.generate``) only calls ``run_generation``; everything here is plain code over the
database, storage and the engine, so it is testable without Celery.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import PIL.Image
from billiard.exceptions import SoftTimeLimitExceeded
from PIL.PngImagePlugin import PngInfo
from sqlalchemy import select
from sqlalchemy.orm import Session
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential, wait_random

from shared import jobs
from shared.db import is_unavailable
from shared.errors import CancelReason, ErrorCode, JobFailure
from shared.models import Job
from shared.settings import Settings
from shared.storage import ObjectNotFound, StorageError
from worker.runtime import Runtime, SetupFailed

T = TypeVar("T")

log = logging.getLogger(__name__)

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
BASE_MODELS = {"sdxl": "stable-diffusion-xl-base-1.0", "tiny": "tiny-sdxl-random"}


@dataclass(frozen=True)
class JobInput:
    """What the row says to do (read once, right after the claim)."""

    request: dict[str, Any]
    seed: int
    prompt_used: str
    created_at: datetime
    started_at: datetime


class Watch:
    """Renews the lease on a timer and records progress at most every ``interval``; says when to stop.

    ``stop_reason`` becomes ``"canceled"`` when the client asked to cancel, ``"lost"`` when another attempt owns
    the job now (the lease expired and it was re-queued), ``"shutdown"`` when the worker is stopping (Celery's soft
    shutdown ran out of grace and cancelled the task): in each case the run stops at its next step.
    """

    def __init__(self, runtime: Runtime, claim: jobs.Claim) -> None:
        self.runtime = runtime
        self.claim = claim
        self.stop_reason: str | None = None
        self._last_progress = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{claim.job_id}", daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    def _renew(self, step: int | None = None) -> None:
        settings = self.runtime.settings
        try:
            with self.runtime.db.begin() as session:
                cancel = jobs.heartbeat(session, self.claim, settings.lease_s, step=step)
        except Exception as exc:  # a database blip: the next beat tries again, the lease has slack
            log.warning("heartbeat of job %s failed (%s)", self.claim.job_id, type(exc).__name__)
            return
        if cancel is None:
            self.stop_reason = "lost"
        elif cancel:
            self.stop_reason = "canceled"

    def _beat(self) -> None:
        while not self._done.wait(self.runtime.settings.heartbeat_s):
            self._renew()

    def on_step(self, step: int, total: int) -> bool:
        """Step callback of the engine: returns False to interrupt."""
        now = time.monotonic()
        if step == total or now - self._last_progress >= self.runtime.settings.progress_interval_s:
            self._last_progress = now
            self._renew(step)
        if self.stop_reason is None and self.runtime.stopping.is_set():
            self.stop_reason = "shutdown"
        return self.stop_reason is None


def _read_job(runtime: Runtime, claim: jobs.Claim) -> JobInput:
    with runtime.db.begin() as session:
        row = session.execute(
            select(Job.request, Job.seed, Job.prompt_used, Job.created_at, Job.started_at).where(
                Job.id == claim.job_id
            )
        ).one()
        total = int(row.request["params"]["steps"])
        jobs.set_progress_total(session, claim, total)
    return JobInput(row.request, row.seed, row.prompt_used or row.request["prompt"], row.created_at, row.started_at)


def _load_reference(runtime: Runtime, reference: dict[str, Any]) -> PIL.Image.Image:
    try:
        data = runtime.storage.get(reference["storage_key"])
    except ObjectNotFound:
        raise JobFailure(ErrorCode.REFERENCE_INVALID, "a reference image is no longer stored") from None
    try:
        image = PIL.Image.open(io.BytesIO(data), formats=["PNG"])
        image.load()
    except (OSError, SyntaxError, ValueError):
        raise JobFailure(ErrorCode.REFERENCE_INVALID, "a stored reference image cannot be decoded") from None
    return image.convert("RGB")


def _encode(image: PIL.Image.Image, fmt: str, runtime: Runtime, job: JobInput, index: int) -> bytes:
    buffer = io.BytesIO()
    if fmt == "png":
        info = None
        if runtime.settings.png_metadata:  # off by default: memoir text must not leak into files
            info = PngInfo()
            info.add_text("prompt", job.prompt_used)
            info.add_text("seed", str(job.seed + index))
        image.save(buffer, format="PNG", compress_level=runtime.settings.png_compress_level, pnginfo=info)
    elif fmt == "jpeg":
        image.save(buffer, format="JPEG", quality=92)
    else:
        image.save(buffer, format="WEBP", quality=90)
    return buffer.getvalue()


def _store(runtime: Runtime, claim: jobs.Claim, job: JobInput, images: list[PIL.Image.Image]) -> list[jobs.StoredImage]:
    fmt = job.request["params"].get("output_format", "png")
    stored = []
    for index, image in enumerate(images):
        data = _encode(image, fmt, runtime, job, index)
        # Per-attempt keys: a losing attempt can never overwrite the winner's images.
        key = f"jobs/{claim.job_id}/{claim.attempt}/{index}.{fmt}"
        runtime.storage.put(key, data, CONTENT_TYPES[fmt])
        stored.append(
            jobs.StoredImage(
                index=index,
                storage_key=key,
                content_type=CONTENT_TYPES[fmt],
                width=image.width,
                height=image.height,
                sha256=hashlib.sha256(data).hexdigest(),
                size_bytes=len(data),
            )
        )
    return stored


def _model_info(runtime: Runtime) -> dict[str, Any]:
    engine = runtime.engine()
    return {
        "profile": engine.profile.name,
        "base": BASE_MODELS.get(engine.profile.name, engine.profile.name),
        "ip_adapter": engine.profile.identity_weight.removesuffix(".safetensors"),
        "revision": engine.revision,
        "device": engine.device,
        "dtype": str(engine.dtype).removeprefix("torch."),
        "style_lora": None,
        "variant": "a",
    }


def _generate(runtime: Runtime, claim: jobs.Claim, job: JobInput, watch: Watch) -> tuple[list[PIL.Image.Image], float]:
    from worker.pipeline.engine import GenerationRequest

    engine = runtime.engine()
    params = job.request["params"]
    resolved = job.request.get("resolved") or {}
    identity = tuple(_load_reference(runtime, ref) for ref in resolved.get("identity", []))
    style_ref = resolved.get("style")
    request = GenerationRequest(
        prompt=job.prompt_used,
        negative_prompt=job.request.get("negative_prompt"),
        width=params["width"],
        height=params["height"],
        steps=params["steps"],
        guidance_scale=params["guidance_scale"],
        seed=job.seed,
        num_images=params["num_images"],
        identity_images=identity,
        identity_scale=params["identity_scale"],
        style_image=_load_reference(runtime, style_ref) if style_ref else None,
        style_scale=params["style_scale"],
        content_scale=params["content_scale"],
    )
    started = time.monotonic()
    images = engine.generate(request, on_step=watch.on_step)
    return images, time.monotonic() - started


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def _forget_earlier_attempts(runtime: Runtime, claim: jobs.Claim) -> None:
    """An earlier attempt that died between storing its images and finishing left them behind: the winner removes
    them, so a job keeps one image set (best effort; a failure only leaves orphans)."""
    for attempt in range(1, claim.attempt):
        try:
            runtime.storage.delete_prefix(f"jobs/{claim.job_id}/{attempt}/")
        except StorageError:
            log.warning("job %s: images of attempt %d could not be removed", claim.job_id, attempt)


def write(runtime: Runtime, change: Callable[[Session], T]) -> T:
    """Run one transaction, waiting out a database outage (with backoff) for at most a lease.

    A finished generation is worth waiting for: its fenced write still lands if the lease holds; if the outage
    outlasts the lease, the sweep re-queues the job and this attempt's write loses the fence, as it should.
    """
    settings = runtime.settings
    retrying = Retrying(
        retry=retry_if_exception(is_unavailable),
        wait=wait_exponential(multiplier=settings.db_retry_s, max=settings.db_retry_max_s)
        + wait_random(0, settings.db_retry_s),
        stop=stop_after_delay(settings.lease_s),
        reraise=True,
    )
    for attempt in retrying:
        with attempt, runtime.db.begin() as session:
            return change(session)
    raise AssertionError("unreachable: tenacity re-raises the last error")


def retry_delay(settings: Settings, attempt: int) -> float:
    """Backoff before attempt ``attempt + 1`` of a job: doubled per attempt, capped, with jitter."""
    base = min(settings.retry_backoff_max_s, settings.retry_backoff_s * 2 ** max(0, attempt - 1))
    return float(base * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret


@contextlib.contextmanager
def _not_busy_after(runtime: Runtime) -> Iterator[None]:
    try:
        yield
    finally:
        runtime.busy = False


def run_generation(job_id: str, runtime: Runtime) -> str:
    """Run one job to its end (or give it back); returns what happened, for the worker log.

    A database that cannot be reached at the claim raises (the task shell waits and hands the message back to
    the broker); once claimed, every outcome is one fenced transition.
    """
    from worker.pipeline.engine import Interrupted

    settings = runtime.settings
    # 1. Claim: only a queued job runs; a re-delivery of a running or finished job is dropped here.
    with runtime.db.begin() as session:
        claim = jobs.started(session, job_id, runtime.worker_name, settings.lease_s)
    if not isinstance(claim, jobs.Claim):
        log.info("job %s not run: %s", job_id, claim.value)
        return f"skipped:{claim.value}"

    clock = time.monotonic()
    queued_s = 0.0

    def timings(inference_s: float | None = None) -> dict[str, float]:
        values = {"queued_s": round(queued_s, 3), "total_s": round(queued_s + time.monotonic() - clock, 3)}
        if inference_s is not None:
            values["inference_s"] = round(inference_s, 3)
        return values

    def fail(code: ErrorCode, message: str) -> str:
        write(runtime, lambda session: jobs.failed(session, claim, code, message, timings=timings()))
        log.warning("job %s failed: %s", job_id, code.value)
        return f"failed:{code.value}"

    def give_back(why: str, *, backoff: bool = True) -> str:
        delay = retry_delay(settings, claim.attempt) if backoff else 0.0
        write(runtime, lambda session: jobs.requeued(session, claim, why, delay))
        log.warning("job %s given back (%s); runs again in %.1f s at the earliest", job_id, why, delay)
        return f"requeued:{why}"

    def transient(why: str, code: ErrorCode, message: str) -> str:
        """A fault that may pass: another attempt after a backoff, unless this was the last one."""
        if claim.attempt < settings.max_attempts:
            return give_back(why)
        return fail(code, message)

    runtime.busy = True
    with _not_busy_after(runtime), Watch(runtime, claim) as watch:
        try:
            # 2. Read what to do, run the pipeline (references come from storage; no network for a GPU worker).
            job = _read_job(runtime, claim)
            queued_s = max(0.0, (job.started_at - job.created_at).total_seconds())
            images, inference_s = _generate(runtime, claim, job, watch)
            # 3. Store under this attempt's keys, then 4. finish, fenced by the attempt.
            stored = _store(runtime, claim, job, images)
            model = _model_info(runtime)
            won = write(runtime, lambda session: jobs.succeeded(session, claim, stored,
                                                                timings=timings(inference_s), model=model))
            if not won:
                runtime.storage.delete_prefix(f"jobs/{job_id}/{claim.attempt}/")
                log.warning("job %s: attempt %d lost the job before finishing", job_id, claim.attempt)
                return "lost"
            _forget_earlier_attempts(runtime, claim)
            log.info("job %s succeeded in %.2f s (attempt %d)", job_id, inference_s, claim.attempt)
            return "succeeded"
        except Interrupted:
            if watch.stop_reason == "canceled":
                write(runtime, lambda session: jobs.canceled(session, job_id, CancelReason.CANCELED_BY_CLIENT, claim))
                return "canceled"
            if watch.stop_reason == "shutdown":
                return give_back("shutdown", backoff=False)  # not the job's fault: it runs again at once
            return "lost"
        except SetupFailed as exc:
            return fail(ErrorCode.SETUP_FAILED, str(exc))
        except SoftTimeLimitExceeded:
            return fail(ErrorCode.TIME_LIMIT, f"the generation took longer than {settings.task_soft_time_limit_s} s")
        except JobFailure as exc:
            if exc.transient:
                return transient(exc.code.value, exc.code, exc.message)
            return fail(exc.code, exc.message)  # permanent (invalid input, unknown style): no retry
        except StorageError:
            return transient("storage", ErrorCode.INTERNAL, "the image store kept failing")
        except Exception as exc:
            if is_unavailable(exc):
                return transient("database", ErrorCode.INTERNAL, "the database kept failing")
            if _is_out_of_memory(exc):
                import torch

                torch.cuda.empty_cache()
                return fail(ErrorCode.OUT_OF_MEMORY, "the GPU ran out of memory for this size and batch")
            # The exception type only: a message could echo the prompt. A poison job ends here, never loops.
            log.error("job %s: unexpected %s", job_id, type(exc).__name__, exc_info=settings.log_level == "DEBUG")
            return fail(ErrorCode.INTERNAL, "an unexpected error occurred while generating")
