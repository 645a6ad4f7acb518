"""The S3 backend (AWS or any S3-compatible store): boto3 with short timeouts, presigned GETs for clients."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError

from shared.storage.base import ObjectNotFound, Storage, StorageError, validate_key, validate_prefix

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

MAX_PRESIGN_SECONDS = 7 * 24 * 3600  # SigV4 presigned URLs are valid for at most 7 days
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_RETRYABLE_CODES = frozenset({"RequestTimeout", "SlowDown", "Throttling", "ThrottlingException", "InternalError"})

ChecksumMode = Literal["when_supported", "when_required"]
AddressingStyle = Literal["auto", "path", "virtual"]


class S3Storage(Storage):
    """Objects in ``bucket`` under ``prefix``; presigned URLs are signed for ``public_endpoint_url`` when set."""

    page_size = 1000  # keys listed per request: the most S3 returns, and the most one delete_objects takes

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: AddressingStyle = "path",
        checksum_mode: ChecksumMode = "when_required",
        presign_seconds: int = 3600,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        max_attempts: int = 3,
    ) -> None:
        # 1. Check inputs
        if not bucket or "/" in bucket:
            raise ValueError(f"S3 `bucket` must be a bucket name, got {bucket!r}")
        prefix = prefix.strip("/")
        self.bucket = bucket
        self.prefix = validate_key(prefix) + "/" if prefix else ""
        self.presign_seconds = _check_lifetime(presign_seconds)
        if (access_key_id is None) != (secret_access_key is None):
            raise ValueError("S3 `access_key_id` and `secret_access_key` must be set together")
        self.endpoint_url = endpoint_url
        # 2. Clients: one for the services, one whose endpoint is the address clients reach (it only signs URLs)
        session = boto3.session.Session(
            aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key, region_name=region
        )
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": addressing_style},
            # boto3 >= 1.36 adds CRC checksums by default; several S3-compatible stores reject them.
            request_checksum_calculation=checksum_mode,
            response_checksum_validation=checksum_mode,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # In this dict botocore's "max_attempts" counts retries only; "total_max_attempts" includes the first.
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
        )
        self._client: S3Client = session.client("s3", endpoint_url=endpoint_url, config=config)
        self._signer: S3Client = (
            session.client("s3", endpoint_url=public_endpoint_url, config=config)
            if public_endpoint_url
            else self._client
        )

    def __repr__(self) -> str:
        return f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    def _key(self, key: str) -> str:
        return self.prefix + validate_key(key)

    @contextmanager
    def _errors(self, action: str, key: str = "", *, lookup: bool = False) -> Iterator[None]:
        """Translate botocore errors; with ``lookup`` a 404 means "no such key" (``ObjectNotFound``)."""
        where = f"{self.bucket}/{self.prefix}{key}"
        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "unknown"))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if lookup and code in _NOT_FOUND_CODES:
                raise ObjectNotFound(key) from None
            retryable = status >= 500 or status in {408, 429} or code in _RETRYABLE_CODES
            raise StorageError(f"S3 {action} {where} failed: {code} (HTTP {status})", retryable=retryable) from exc
        except BotoCoreError as exc:
            retryable = isinstance(exc, BotoConnectionError | HTTPClientError | IncompleteReadError)
            raise StorageError(f"S3 {action} {where} failed: {type(exc).__name__}", retryable=retryable) from exc

    def put(self, key: str, data: bytes, content_type: str) -> None:
        full = self._key(key)
        with self._errors("put", key):
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        full = self._key(key)
        with self._errors("get", key, lookup=True):
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            with response["Body"] as body:
                return body.read()

    def delete(self, key: str) -> None:
        full = self._key(key)
        with self._errors("delete", key):  # S3 answers 204 for a missing key as well
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def delete_prefix(self, prefix: str) -> int:
        full = self.prefix + validate_prefix(prefix)
        removed = 0
        with self._errors("delete_prefix", prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": self.page_size}
            )
            for page in pages:
                keys: list[ObjectIdentifierTypeDef] = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if not keys:
                    continue
                result = self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                if errors := result.get("Errors"):
                    code = errors[0].get("Code", "unknown")
                    raise StorageError(f"S3 delete_prefix {self.bucket}/{full} failed for {len(errors)} keys: {code}")
                removed += len(keys)
        return removed

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            with self._errors("exists", key, lookup=True):
                self._client.head_object(Bucket=self.bucket, Key=full)
        except ObjectNotFound:
            return False
        return True

    def presigned_url(self, key: str, expires_in: int | None = None) -> str | None:
        full = self._key(key)
        lifetime = self.presign_seconds if expires_in is None else _check_lifetime(expires_in, "expires_in")
        with self._errors("presign", key):
            return self._signer.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=lifetime
            )

    def local_path(self, key: str) -> Path | None:
        validate_key(key)
        return None

    def check(self) -> None:
        with self._errors("check"):
            self._client.head_bucket(Bucket=self.bucket)

    def download_tree(self, target: Path) -> tuple[int, int]:
        """Copy every object under this store's prefix into ``target`` (same relative paths), streaming each to a
        temporary file renamed into place; objects already there with the same size are skipped. Returns
        (downloaded, skipped). Used to sync model weights from a bucket (multi-GB files never sit in memory)."""
        downloaded = skipped = 0
        with self._errors("download_tree"):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix, PaginationConfig={"PageSize": self.page_size}
            )
            for page in pages:
                for item in page.get("Contents", []):
                    relative = validate_key(item["Key"].removeprefix(self.prefix))
                    path = target / relative
                    if path.is_file() and path.stat().st_size == item["Size"]:
                        skipped += 1
                        continue
                    path.parent.mkdir(parents=True, exist_ok=True)
                    partial = path.with_name(f".{path.name}.partial")
                    self._client.download_file(self.bucket, item["Key"], str(partial))
                    partial.chmod(0o644)
                    partial.replace(path)
                    downloaded += 1
        return downloaded, skipped


def _check_lifetime(seconds: int, name: str = "presign_seconds") -> int:
    if not 1 <= seconds <= MAX_PRESIGN_SECONDS:
        raise ValueError(f"`{name}` must be between 1 and {MAX_PRESIGN_SECONDS} seconds, got {seconds}")
    return seconds
