"""Servers of our own for the fault tests: a Redis and a PostgreSQL on free ports that a test may stop, start
and wipe (never the shared ones)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis
import sqlalchemy as sa

from tests.helpers import wait_for
from tests.system.procs import free_port


class RedisServer:
    """``redis-server`` on a free loopback port; append-only, so a stop then start keeps its data unless wiped."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=1)

    def _up(self) -> bool:
        try:
            return bool(self.client().ping())
        except redis.RedisError:
            return False

    def start(self) -> None:
        subprocess.run(
            ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(self.port),
             "--dir", str(self.directory), "--pidfile", str(self.directory / "redis.pid"),
             "--logfile", str(self.directory / "redis.log"), "--appendonly", "yes", "--appendfsync", "always",
             "--save", ""],
            check=True, stdout=subprocess.DEVNULL,
        )
        wait_for(self._up, 20, "our Redis to start")

    def stop(self) -> None:
        try:
            self.client().shutdown(nosave=False)
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits
        wait_for(lambda: not self._up(), 20, "our Redis to stop")

    def wipe(self) -> None:
        """Remove its data (it must be stopped): the next start is an empty server."""
        for path in self.directory.iterdir():
            if path.name not in ("redis.log",):
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink()


class PostgresServer:
    """A throwaway PostgreSQL cluster (fsync off) on a free port, run as the ``postgres`` user."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        assert bins, "no PostgreSQL binaries under /usr/lib/postgresql"
        self.bin = Path(bins[-1])
        self.directory = Path(tempfile.mkdtemp(prefix="illustrations-pg-"))
        shutil.chown(self.directory, "postgres", "postgres")
        os.chmod(self.directory, 0o700)
        self.data = self.directory / "data"
        self.port = free_port()
        self.url = f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                           "--no-sync", "-E", "UTF8"])

    def _as_postgres(self, argv: list[str]) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, cwd=self.directory)

    def _up(self) -> bool:
        engine = sa.create_engine(self.url, connect_args={"connect_timeout": 1})
        try:
            with engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
            return True
        except sa.exc.OperationalError:
            return False
        finally:
            engine.dispose()

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.directory / "pg.log"),
                           "-o", options, "-w", "start"])
        wait_for(self._up, 30, "our PostgreSQL to start")

    def stop(self) -> None:
        started = time.monotonic()
        self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])
        assert time.monotonic() - started < 60

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.directory, ignore_errors=True)
