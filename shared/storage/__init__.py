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
from typing import TYPE_CHECKING

from shared.storage.base import (
    MAX_KEY_LENGTH,
    ObjectNotFound,
    Storage,
    StorageError,
    validate_key,
    validate_prefix,
)

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

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


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
