"""``Prefer: wait=N``: hold a request until its job finishes, woken by a notification, not by polling.

PostgreSQL: one listener thread per API process holds a ``LISTEN`` connection (``shared.notify``: every terminal
transition notifies in its own transaction) and sets the events of the requests waiting for that job. A waiting
request costs its gthread thread blocked on an ``Event`` (no CPU, no database round trips) plus one re-read every
``wait_recheck_s`` in case the listener lost its connection (it reconnects after ``listen_reconnect_s`` and then
wakes every waiter to re-read). ``api_threads`` bounds how many requests wait at once per process, as it bounds
every request under gthread.

SQLite (embedded mode): no notifications exist; a waiting request re-reads its job every ``wait_poll_s`` (a local
read of a few microseconds, not a tight loop).
"""

from __future__ import annotations

import logging
import os
import re
import select
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from shared import notify
from shared.db import Database
from shared.settings import Settings

log = logging.getLogger(__name__)

_WAIT = re.compile(r"^\s*wait\s*=\s*\"?(\d{1,6})\"?\s*$", re.IGNORECASE)


def prefer_wait(header: str | None, cap_s: float) -> float | None:
    """The ``wait`` preference of a ``Prefer`` header in seconds, capped; None when absent or malformed."""
    if not header:
        return None
    for preference in re.split(r"[,;]", header):
        match = _WAIT.match(preference)
        if match:
            return min(float(match.group(1)), cap_s)
    return None


class JobWaiter:
    """Per process: the requests waiting for jobs, and (PostgreSQL) the listener that wakes them."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.uses_notifications = db.dialect == "postgresql"
        self._lock = threading.Lock()
        self._waiting: dict[str, set[threading.Event]] = defaultdict(set)
        self._listener: threading.Thread | None = None
        self._listener_pid: int | None = None
        self._listening = threading.Event()
        self._stop = threading.Event()

    # --- waiting ----------------------------------------------------------------------------------------------
    def wait(self, job_id: str, timeout_s: float, is_done: Callable[[], bool]) -> bool:
        """Block until ``is_done()`` (re-checked when woken) or ``timeout_s`` passes; returns ``is_done()``."""
        deadline = time.monotonic() + timeout_s
        if not self.uses_notifications:
            return self._poll(deadline, is_done)
        self._ensure_listener()
        event = threading.Event()
        with self._lock:
            self._waiting[job_id].add(event)
        try:
            while True:
                if is_done():  # after registering: a notification from now on cannot be missed
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                event.wait(min(remaining, self.settings.wait_recheck_s))
                event.clear()
        finally:
            with self._lock:
                events = self._waiting.get(job_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del self._waiting[job_id]

    def _poll(self, deadline: float, is_done: Callable[[], bool]) -> bool:
        pause = threading.Event()  # never set: a timed pause between reads
        while True:
            if is_done():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            pause.wait(min(remaining, self.settings.wait_poll_s))

    def waiting(self) -> int:
        with self._lock:
            return sum(len(events) for events in self._waiting.values())

    def _wake(self, job_id: str | None) -> None:
        with self._lock:
            targets = (self._waiting.get(job_id, set()) if job_id is not None
                       else {event for events in self._waiting.values() for event in events})
            for event in targets:
                event.set()

    # --- listening (PostgreSQL) -------------------------------------------------------------------------------
    def _ensure_listener(self) -> None:
        with self._lock:
            if self._listener is not None and self._listener_pid == os.getpid() and self._listener.is_alive():
                return
            self._listener_pid = os.getpid()  # after a fork (gunicorn), each process listens for itself
            self._listening.clear()
            self._listener = threading.Thread(target=self._listen_forever, name="job-listener", daemon=True)
            self._listener.start()
        self._listening.wait(self.settings.db_connect_timeout_s)

    def _connect(self) -> Any:
        raw = self.db.engine.raw_connection()
        connection: Any = raw.dbapi_connection
        raw.detach()  # our own connection, outside the pool, for as long as we listen
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {notify.CHANNEL}")
        return connection

    def _listen_forever(self) -> None:
        while not self._stop.is_set():
            connection = None
            try:
                connection = self._connect()
                self._listening.set()
                self._wake(None)  # anything finished while we were not listening is re-read
                while not self._stop.is_set():
                    ready, _, _ = select.select([connection], [], [], 1.0)
                    if not ready:
                        continue
                    connection.poll()
                    while connection.notifies:
                        self._wake(connection.notifies.pop(0).payload)
            except Exception as exc:  # the database went away: wake everyone, reconnect after a pause
                log.warning("job listener: %s; reconnecting", type(exc).__name__)
                self._wake(None)
            finally:
                if connection is not None:
                    try:
                        connection.close()
                    except Exception:  # noqa: S110 - a connection already broken: nothing to close
                        pass
            self._stop.wait(self.settings.listen_reconnect_s)

    def close(self) -> None:
        self._stop.set()
        if self._listener is not None:
            self._listener.join(5)
