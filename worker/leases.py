"""The lease watch of a running attempt, for generation jobs and trainings alike.

From the claim on, a thread renews the attempt's lease every ``heartbeat_s`` through the kind's heartbeat
(``shared.jobs.heartbeat`` or ``shared.training.heartbeat``). Progress reaches the database in one of two ways: a
generation's step loop only notes its step in memory (``record``) and the same thread writes it, at most every
``progress_interval_s`` (and with each heartbeat), so the denoising loop never waits on a database round trip; a
training's loop renews with its progress itself (``renew``, at most every ``progress_interval_s``). Each renewal
reads the answer of the row, so the attempt learns why to stop at its next step: ``stop_reason`` becomes
``"canceled"`` when the client asked to cancel and ``"lost"`` when another attempt owns the row now (the lease
expired and it was re-queued). The kind adds its own reasons (the worker is stopping). A failed renewal (a database
blip) is logged and tried again at the next beat: the lease has slack.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, Self, TypeVar

from worker.runtime import Runtime

log = logging.getLogger(__name__)


class Claimed(Protocol):
    @property
    def job_id(self) -> str: ...


ClaimT = TypeVar("ClaimT", bound=Claimed)

# ``heartbeat(session, claim, lease_s, step=..., ...)``: ``None`` if the attempt lost the row, else whether to cancel.
Heartbeat = Callable[..., "bool | None"]


class LeaseWatch(Generic[ClaimT]):
    """Renews an attempt's lease on a timer (a daemon thread, while the ``with`` block runs) and says when to stop."""

    def __init__(self, runtime: Runtime, claim: ClaimT, heartbeat: Heartbeat, kind: str) -> None:
        self.runtime = runtime
        self.claim = claim
        self.stop_reason: str | None = None
        self._heartbeat = heartbeat
        self._kind = kind  # "job", "training": how the log names the row
        self._last_progress = time.monotonic()  # the claim recorded the starting progress just now
        self._changed = threading.Condition()  # guards what follows; notified by ``record`` and the end
        self._done = False
        self._pending: dict[str, Any] | None = None  # progress noted by ``record``, not yet written
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{claim.job_id}", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        """Stop the thread; progress still pending is dropped: the transaction that ends the attempt writes the row's
        last progress (the total on success)."""
        with self._changed:
            self._done = True
            self._changed.notify()
        self._thread.join()

    def renew(self, **progress: Any) -> None:
        """Renew the lease now, recording ``progress`` (e.g. ``step``, ``loss``); note a cancel or a lost row."""
        try:
            with self.runtime.db.begin() as session:
                cancel = self._heartbeat(session, self.claim, self.runtime.settings.lease_s, **progress)
                # Known before the commit: once the progress is visible, so is the reason to stop.
                if cancel is None:
                    self.stop_reason = "lost"
                elif cancel:
                    self.stop_reason = "canceled"  # the client's wish wins over a stopping worker: it ends the row
        except Exception as exc:  # a database blip: the next beat tries again, the lease has slack
            log.warning("heartbeat of %s %s failed (%s)", self._kind, self.claim.job_id, type(exc).__name__)

    def record(self, **progress: Any) -> None:
        """Note ``progress`` (e.g. ``step``) for the watch's thread to write, at most every ``progress_interval_s``
        (the latest one noted wins). Never waits on the database."""
        with self._changed:
            self._pending = progress
            self._changed.notify()

    def progress_due(self) -> bool:
        """Whether ``progress_interval_s`` passed since progress was last recorded (if so, it counts as recorded)."""
        now = time.monotonic()
        if now - self._last_progress < self.runtime.settings.progress_interval_s:
            return False
        self._last_progress = now
        return True

    def stop(self, reason: str) -> None:
        """Stop at the next step for ``reason``, unless a reason is already known."""
        self.stop_reason = self.stop_reason or reason

    def _beat(self) -> None:
        """Renew every ``heartbeat_s`` with the latest recorded progress; write recorded progress (which renews too)
        sooner when ``progress_interval_s`` has passed since the last progress write."""
        settings = self.runtime.settings
        next_beat = time.monotonic() + settings.heartbeat_s
        next_progress = self._last_progress + settings.progress_interval_s
        while True:
            with self._changed:
                while not self._done:
                    now = time.monotonic()
                    progress_due = self._pending is not None and now >= next_progress
                    if progress_due or now >= next_beat:
                        break
                    wake = next_beat if self._pending is None else min(next_beat, next_progress)
                    self._changed.wait(wake - now)
                if self._done:
                    return
                progress, self._pending = self._pending, None
            self.renew(**(progress or {}))
            now = time.monotonic()
            next_beat = now + settings.heartbeat_s
            if progress is not None:
                next_progress = now + settings.progress_interval_s
