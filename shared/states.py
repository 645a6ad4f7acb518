"""Job states and the one table that says which transition is legal (docs/architecture.md, "Job states").

| from     | to                              | when                                                          |
|----------|---------------------------------|---------------------------------------------------------------|
| (new)    | queued                          | accepted                                                      |
| (new)    | succeeded                       | a cache hit: born finished                                    |
| queued   | running                         | a worker claims it: attempt + 1, lease                        |
| queued   | canceled                        | client cancel, cancel_after passed, user deleted              |
| queued   | failed                          | the preparation step could not fetch a reference URL          |
| queued   | succeeded / failed              | a follower (in-flight dedupe) finishes with its leader        |
| running  | succeeded / failed / canceled   | the attempt that holds the lease finishes                     |
| running  | queued                          | lease expired, worker asked to stop, transient fault          |
| running  | failed                          | lease expired on the last attempt (worker_lost)               |

Terminal states never change.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: Final = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})

# (from, to); None is "a new row".
TRANSITIONS: Final[frozenset[tuple[JobStatus | None, JobStatus]]] = frozenset(
    {
        (None, JobStatus.QUEUED),
        (None, JobStatus.SUCCEEDED),
        (JobStatus.QUEUED, JobStatus.RUNNING),
        (JobStatus.QUEUED, JobStatus.CANCELED),
        (JobStatus.QUEUED, JobStatus.FAILED),  # preparation (CPU) failed, or a follower's leader failed
        (JobStatus.QUEUED, JobStatus.SUCCEEDED),  # a follower (in-flight dedupe) shares its leader's images
        (JobStatus.RUNNING, JobStatus.SUCCEEDED),
        (JobStatus.RUNNING, JobStatus.FAILED),
        (JobStatus.RUNNING, JobStatus.CANCELED),
        (JobStatus.RUNNING, JobStatus.QUEUED),
    }
)


class IllegalTransition(ValueError):
    pass


def check_transition(source: JobStatus | None, target: JobStatus) -> None:
    """Raise ``IllegalTransition`` unless the table allows ``source -> target``."""
    if (source, target) not in TRANSITIONS:
        raise IllegalTransition(f"job transition {source} -> {target} is not allowed")
