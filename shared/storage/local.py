"""The local backend: files under a root folder, written atomically (temp file + ``os.replace``), mode 0644."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from shared.storage.base import ObjectNotFound, Storage, StorageError, validate_key, validate_prefix

_TMP_PREFIX = ".~"  # "~" is not allowed in keys, so temp files never collide with (or list as) objects
_RETRYABLE_ERRNOS = frozenset({errno.EIO, errno.EAGAIN, errno.EBUSY, errno.ESTALE, errno.ETIMEDOUT, errno.EINTR})


class LocalStorage(Storage):
    """Files under ``root``: ``put`` writes a temp file in the target folder, then ``os.replace`` (mode 0644)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        path = self.root / validate_key(key)
        # A symlink inside the root could still point out of it; the resolved path must stay inside.
        if not path.resolve().is_relative_to(self.root):
            raise ValueError(f"storage `key` {key!r} resolves outside the storage root")
        return path

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise StorageError(
                f"local storage {action} failed for key {key!r}: {exc.strerror or type(exc).__name__}",
                retryable=exc.errno in _RETRYABLE_ERRNOS,
            ) from exc

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self._path(key)
        with self._errors("put", key):
            for attempt in range(3):
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=path.parent)
                    break
                except FileNotFoundError:  # a concurrent delete_prefix removed the folder; make it again
                    if attempt == 2:
                        raise
            try:
                with os.fdopen(fd, "wb") as file:
                    os.fchmod(file.fileno(), 0o644)
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())  # the row saying "succeeded" must not outlive the bytes after a crash
                os.replace(tmp, path)
            except BaseException:
                with suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise

    def get(self, key: str) -> bytes:
        path = self._path(key)
        with self._errors("get", key):
            try:
                return path.read_bytes()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise ObjectNotFound(key) from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        with self._errors("delete", key), suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()

    def delete_prefix(self, prefix: str) -> int:
        top = self._path(validate_prefix(prefix)[:-1])
        if not top.is_dir() or top.is_symlink():
            return 0
        removed = 0
        with self._errors("delete_prefix", prefix):
            for folder, dirs, files in os.walk(top, topdown=False):
                for name in files:
                    with suppress(FileNotFoundError):
                        os.unlink(os.path.join(folder, name))
                        if not name.startswith(_TMP_PREFIX):  # a racing put's temp file is not an object
                            removed += 1
                for name in dirs:
                    _remove_dir(os.path.join(folder, name))
            _remove_dir(str(top))
        return removed

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def presigned_url(self, key: str, expires_in: int | None = None) -> str | None:
        validate_key(key)
        return None

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def check(self) -> None:
        with self._errors("check", "."):
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=_TMP_PREFIX + "check-", dir=self.root)
            os.close(fd)
            os.unlink(probe)


def _remove_dir(path: str) -> None:
    """Remove an emptied folder (or a symlink found in its place); a put racing into it keeps it."""
    try:
        if os.path.islink(path):
            os.unlink(path)
        else:
            os.rmdir(path)
    except OSError as exc:
        if exc.errno not in {errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT}:
            raise
