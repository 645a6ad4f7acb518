"""What every store is: the ``Storage`` interface, its errors and the key checks (the backends and
``shared.storage.open_storage`` build on it; it imports neither backend)."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path

MAX_KEY_LENGTH = 512
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


class StorageError(Exception):
    """The store could not do the operation; ``retryable`` is True for transient faults (network, timeouts, 5xx)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class ObjectNotFound(LookupError):
    """No object under this key (not a fault: retrying will not help)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no object at key {key!r}")
        self.key = key


def validate_key(key: str) -> str:
    """Return ``key`` if it is a relative POSIX path of ``[A-Za-z0-9._-]`` segments, else raise ``ValueError``."""
    if not isinstance(key, str) or not key:
        raise ValueError("storage `key` must be a non-empty string")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"storage `key` must be at most {MAX_KEY_LENGTH} characters, got {len(key)}")
    for segment in key.split("/"):
        if not _SEGMENT.fullmatch(segment) or segment in {".", ".."}:
            raise ValueError(
                f"storage `key` must be '/'-joined segments of [A-Za-z0-9._-] without '.' or '..', got {key!r}"
            )
    return key


def validate_prefix(prefix: str) -> str:
    """A prefix for ``delete_prefix``: a valid key followed by "/" (so "jobs/1/" never matches "jobs/10/")."""
    if not isinstance(prefix, str) or not prefix.endswith("/"):
        raise ValueError(f"storage `prefix` must end with '/', got {prefix!r}")
    validate_key(prefix[:-1])
    return prefix


class Storage(ABC):
    """Bytes under keys. ``put`` is atomic for readers: they see the old object or the new one, never a part."""

    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str) -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; ``ObjectNotFound`` if there is none."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object; a missing key is fine."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Remove every object under ``prefix`` (which ends with "/"); return how many were removed."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def presigned_url(self, key: str, expires_in: int | None = None) -> str | None:
        """A URL clients can GET without credentials (S3), or None where the API must stream the object."""

    @abstractmethod
    def local_path(self, key: str) -> Path | None:
        """The file behind ``key`` (local store; it may not exist), or None for a remote store."""

    @abstractmethod
    def check(self) -> None:
        """Cheap reachability check; raise ``StorageError`` if the store cannot be used."""
