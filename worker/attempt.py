"""One attempt at a generation job (as Cog's runner has a ``PredictTask`` per prediction): the claim, what the row
says to do, the lease watch, where the time went, and the ways the attempt ends.

Each end (``succeed``, ``fail``, ``give_back``, ``cancel``, ``lose``) writes one transaction: the job's fenced
transition (which records the webhook event of a terminal one, ``shared.jobs.finished``) and the attempt's
``generation_metrics`` row, waiting out a database outage (``write``). Each returns what happened, for the log.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Table, insert
from sqlalchemy.orm import Session
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential, wait_random

from shared import experiments, jobs, styles
from shared.db import is_unavailable
from shared.errors import CancelReason, ErrorCode, JobFailure
from shared.models import GenerationMetric
from shared.settings import Settings
from shared.storage import StorageError
from shared.stored_request import StoredRequest
from worker import observability
from worker.leases import LeaseWatch
from worker.runtime import Runtime

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobInput:
    """What the row says to do (read once, in the claim's transaction)."""

    stored: StoredRequest | None  # None: the row's request cannot be read (a poison job: it fails ``internal``)
    seed: int
    prompt_used: str
    created_at: datetime
    started_at: datetime
    client_id: str
    user_id: str
    queue: str
    style: styles.ResolvedStyle | None = None
    style_error: str | None = None  # the style it names is gone: the job fails style_not_found

    @property
    def request(self) -> StoredRequest:
        """The stored request; a row whose request cannot be read fails the job (``internal``, never retried)."""
        if self.stored is None:
            raise JobFailure(ErrorCode.INTERNAL, "the job's stored request cannot be read")
        return self.stored

    @property
    def variant(self) -> str:
        """The A/B variant decided at submit (``shared.experiments``); jobs from before experiments are ``a``."""
        return self.stored.variant_or_control if self.stored is not None else experiments.CONTROL


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


_METRICS_INSERT = insert(cast(Table, GenerationMetric.__table__))


class Attempt:
    """One attempt at a job, from its claim to one of its ends."""

    def __init__(self, runtime: Runtime, claim: jobs.Claim, job: JobInput) -> None:
        self.runtime = runtime
        self.claim = claim
        self.job = job
        # Renews the lease from now on; ``stop_reason``: canceled, lost, or shutdown (``on_step``).
        self.lease = LeaseWatch(runtime, claim, jobs.heartbeat, "job")
        # Where the time went and what it used (its ``generation_metrics`` row).
        self.started = time.monotonic()
        self.load_s: float | None = None  # references (storage or embedding cache) and the pipeline's preparation
        self.inference_s: float | None = None  # the pipeline call
        self.store_s: float | None = None  # images stored and the job finished
        self.embeddings_cached = 0
        self.regions: int | None = None  # people tied to a region by a mask (0: none)
        self.faces_found = 0  # identity references whose face was found and cropped
        self.lora_resident: bool | None = None
        self.peak_memory_bytes: int | None = None

    # --- Timings ------------------------------------------------------------------------------------------------

    @property
    def queued_s(self) -> float:
        """From the job's creation to this attempt's claim (database clock)."""
        return max(0.0, (self.job.started_at - self.job.created_at).total_seconds())

    @property
    def elapsed_s(self) -> float:
        """Since the claim."""
        return time.monotonic() - self.started

    def timings(self) -> dict[str, float]:
        """The job's ``timings`` as the client reads them: queued, in the pipeline, in all (from creation)."""
        values = {"queued_s": round(self.queued_s, 3), "total_s": round(self.queued_s + self.elapsed_s, 3)}
        if self.inference_s is not None:
            values["inference_s"] = round(self.inference_s, 3)
        return values

    def metric(self, outcome: str, error_code: str | None = None) -> dict[str, Any]:
        """The attempt's ``generation_metrics`` row."""
        runtime, job = self.runtime, self.job
        stored = job.stored  # None for a poison job, whose row is still written as it fails
        engine = runtime.loaded_engine()
        return {
            "job_id": self.claim.job_id,
            "client_id": job.client_id,
            "user_id": job.user_id,
            "attempt": self.claim.attempt,
            "outcome": outcome,
            "error_code": error_code,
            "queue": job.queue,
            "queue_wait_s": self.queued_s,
            "load_s": self.load_s,
            "inference_s": self.inference_s,
            "store_s": self.store_s,
            "total_s": self.elapsed_s,
            # 0: the row of a job whose request cannot be read (a poison job) is still written as it fails.
            "steps": stored.params.steps if stored is not None else 0,
            "width": stored.params.width if stored is not None else 0,
            "height": stored.params.height if stored is not None else 0,
            "num_images": stored.params.num_images if stored is not None else 0,
            "profile": engine.profile.name if engine else runtime.settings.model_profile,
            "revision": engine.revision if engine else None,
            "identity_refs": len(stored.resolved.identity) if stored is not None else 0,
            "style_ref": stored is not None and stored.resolved.style is not None,
            "embeddings_cached": self.embeddings_cached,
            "lora": job.style.label if job.style else None,
            "lora_resident": self.lora_resident,
            "worker": runtime.worker_name,
            "gpu": runtime.gpu,
            "device": engine.device_name if engine else None,
            "model_load_s": runtime.load_seconds,
            "peak_gpu_memory_bytes": self.peak_memory_bytes,
            "variant": job.variant,
            "regions": self.regions,
            "faces_found": self.faces_found if self.regions is not None else None,
            "quality": stored.params.quality if stored is not None else None,
        }

    def _record(self, session: Session, outcome: str, error_code: str | None = None) -> None:
        """Add the metrics row to the transaction that ends the attempt: one Core INSERT built once, the row as its
        parameters (0.26 ms against 0.57 ms for ``insert(...).values(**row)`` built per call; ``bench/claim_ab.py``)."""
        session.execute(_METRICS_INSERT, self.metric(outcome, error_code))

    # --- While it runs ------------------------------------------------------------------------------------------

    def on_step(self, step: int, total: int) -> bool:
        """Step callback of the engine, in the denoising loop: notes the step in memory (the lease watch's thread
        writes it, at most every interval, and reads the cancel flag with it) and returns False to interrupt once
        there is a reason to stop. No database round trip here. The last step is not written on its own: the
        transaction that ends the attempt sets the progress to the total."""
        if step < total:
            self.lease.record(step=step)
        if self.runtime.stopping.is_set():  # Celery's soft shutdown ran out of grace: the job goes back
            self.lease.stop("shutdown")
        return self.lease.stop_reason is None

    # --- The ends -----------------------------------------------------------------------------------------------

    def _finish(self, change: Callable[[Session], bool], outcome: str, code: str | None = None) -> bool:
        """One fenced transition and, if it won, the attempt's metrics row: one transaction, outage-tolerant."""
        def transaction(session: Session) -> bool:
            moved = change(session)
            if moved:
                self._record(session, outcome, code)
            return moved

        return write(self.runtime, transaction)

    def succeed(self, stored: list[jobs.StoredImage], model: dict[str, Any], *, store_started: float) -> str:
        """Record the images (stored under this attempt's keys since ``store_started``) and finish ``succeeded``;
        an attempt that lost the job meanwhile deletes its images and ends ``lost``."""
        claim = self.claim

        def transaction(session: Session) -> bool:
            won = jobs.succeeded(session, claim, stored, timings=self.timings(), model=model)
            self.store_s = time.monotonic() - store_started
            self._record(session, "succeeded" if won else "lost")
            return won

        if not write(self.runtime, transaction):
            self.runtime.storage.delete_prefix(f"jobs/{claim.job_id}/{claim.attempt}/")
            log.warning("job %s: attempt %d lost the job before finishing", claim.job_id, claim.attempt)
            return "lost"
        self._forget_earlier_attempts()
        observability.succeeded(model["profile"], self.job.queue, self.queued_s, self.elapsed_s, self.inference_s,
                                self.peak_memory_bytes)
        log.info("job %s succeeded in %.2f s (attempt %d)", claim.job_id, self.inference_s, claim.attempt)
        return "succeeded"

    def fail(self, code: ErrorCode, message: str) -> str:
        """Finish ``failed`` with ``code``: no retry."""
        self._finish(lambda session: jobs.failed(session, self.claim, code, message, timings=self.timings()),
                     "failed", code.value)
        log.warning("job %s failed: %s", self.claim.job_id, code.value)
        return f"failed:{code.value}"

    def give_back(self, why: str, *, backoff: bool = True) -> str:
        """Back to the queue (a transient fault, the worker stopping); the relay publishes it again, after a backoff
        unless ``backoff`` is off (not the job's fault: it runs again at once)."""
        delay = retry_delay(self.runtime.settings, self.claim.attempt) if backoff else 0.0
        self._finish(lambda session: jobs.requeued(session, self.claim, why, delay), "requeued", why)
        log.warning("job %s given back (%s); runs again in %.1f s at the earliest", self.claim.job_id, why, delay)
        return f"requeued:{why}"

    def retry_or_fail(self, why: str, code: ErrorCode, message: str) -> str:
        """A fault that may pass: another attempt after a backoff, unless this was the last one."""
        if self.claim.attempt < self.runtime.settings.max_attempts:
            return self.give_back(why)
        return self.fail(code, message)

    def cancel(self) -> str:
        """The client canceled while it ran: finish ``canceled``."""
        reason = CancelReason.CANCELED_BY_CLIENT
        self._finish(lambda session: jobs.canceled(session, self.claim.job_id, reason, self.claim), "canceled",
                     reason.value)
        return "canceled"

    def lose(self) -> str:
        """Another attempt owns the job now: only the metrics row is written."""
        write(self.runtime, lambda session: self._record(session, "lost"))
        return "lost"

    def stopped(self) -> str:
        """The run stopped at a step because the lease watch said so: end the way its reason says."""
        if self.lease.stop_reason == "canceled":
            return self.cancel()
        if self.lease.stop_reason == "shutdown":
            return self.give_back("shutdown", backoff=False)
        return self.lose()

    def _forget_earlier_attempts(self) -> None:
        """An earlier attempt that died between storing its images and finishing left them behind: the winner
        removes them, so a job keeps one image set (best effort; a failure only leaves orphans)."""
        for attempt in range(1, self.claim.attempt):
            try:
                self.runtime.storage.delete_prefix(f"jobs/{self.claim.job_id}/{attempt}/")
            except StorageError:
                log.warning("job %s: images of attempt %d could not be removed", self.claim.job_id, attempt)
