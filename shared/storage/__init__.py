"""Object storage for generated images, reference photos and model files: a local folder or an S3 bucket.

``open_storage(settings)`` picks the backend from ``storage_url``: ``s3://bucket/prefix`` gives ``S3Storage``
(``shared.storage.s3``), a path (optionally ``file://``) gives ``LocalStorage`` (``shared.storage.local``). Keys are
relative POSIX paths (``jobs/<id>/0.png``) checked by ``validate_key`` in every method, so a key can never leave the
local root or the S3 prefix.

Errors: ``ObjectNotFound`` (a ``LookupError``) for a missing key; ``StorageError`` when the store could not do the
operation, with ``retryable`` telling a task whether trying again may help (network, timeouts, 5xx) or not
(credentials, missing bucket, full disk). Neither carries object bodies.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.settings import Settings

__all__ = [
    "MAX_KEY_LENGTH",
    "ObjectNotFound",
    "Storage",
    "StorageError",
    "open_storage",
    "validate_key",
    "validate_prefix",
]

MAX_KEY_LENGTH = 512
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


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


def open_storage(settings: Settings) -> Storage:
    """The store named by ``settings.effective_storage_url``: ``s3://bucket/prefix`` or a local folder."""
    # The backends are imported here so that local mode never imports boto3.
    url = settings.effective_storage_url
    if url.startswith("s3://"):
        from shared.storage.s3 import S3Storage

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return S3Storage(
            bucket,
            prefix,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
            addressing_style=settings.s3_addressing_style,
            checksum_mode=settings.s3_checksum_mode,
            presign_seconds=settings.presign_expires_s,
            connect_timeout=settings.s3_connect_timeout_s,
            read_timeout=settings.s3_read_timeout_s,
            max_attempts=settings.s3_max_attempts,
        )
    if scheme := _SCHEME.match(url):
        if scheme[0] != "file://":
            raise ValueError(f"ILLUSTRATIONS_STORAGE_URL must be s3://bucket/prefix or a folder, got {scheme[0]!r}")
        url = url.removeprefix("file://")
    from shared.storage.local import LocalStorage

    return LocalStorage(url)
