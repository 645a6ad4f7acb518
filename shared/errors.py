"""The closed list of job error codes, and the one exception hierarchy of the project.

Messages never contain prompt or memoir text: they describe what went wrong, not what the user wrote.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    """Why a job failed (``error.code`` of a ``failed`` job)."""

    REFERENCE_UNREACHABLE = "reference_unreachable"
    REFERENCE_BLOCKED = "reference_blocked"
    REFERENCE_INVALID = "reference_invalid"
    STYLE_NOT_FOUND = "style_not_found"
    OUT_OF_MEMORY = "out_of_memory"
    TIME_LIMIT = "time_limit"
    WORKER_LOST = "worker_lost"
    SETUP_FAILED = "setup_failed"
    INTERNAL = "internal"


class CancelReason(StrEnum):
    """Why a job was canceled (``error.code`` of a ``canceled`` job)."""

    CANCELED_BY_CLIENT = "canceled_by_client"
    DEADLINE = "deadline"
    USER_DELETED = "user_deleted"


class IllustrationsError(Exception):
    """Base of every error this project raises on purpose."""


class JobFailure(IllustrationsError):
    """A job cannot succeed: carries a code of the closed list and a message safe to show the client."""

    def __init__(self, code: ErrorCode, message: str, *, transient: bool = False) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.transient = transient
