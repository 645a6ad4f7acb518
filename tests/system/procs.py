"""Real processes for system tests: started with the project's own CLI, logs kept, always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**settings: str) -> dict[str, str]:
    """The current environment without any ILLUSTRATIONS_* variable, plus the given settings (names without the
    prefix, e.g. ``DATABASE_URL="..."``)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("ILLUSTRATIONS_")}
    env["HF_HUB_OFFLINE"] = "1"
    env.update({f"ILLUSTRATIONS_{name}": value for name, value in settings.items()})
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def run_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cli(*args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"illustrations {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return requests.get(url, timeout=2).status_code == 200
        except requests.RequestException:
            return False

    return check


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 30) -> int | None:
        if self.alive():
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        # Whatever else is left of its session (a pool child that outlived its parent) must not go on consuming the
        # shared broker db in a later test.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        if not self._log.closed:
            self._log.close()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


class Processes:
    def __init__(self, env: dict[str, str], cwd: Path, log_dir: Path) -> None:
        self.env, self.cwd, self.log_dir = env, cwd, log_dir
        self.started: list[Proc] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        """Start ``illustrations ARGS``; ``env`` adds or overrides variables for this process only."""
        proc = Proc(name, cli(*args), {**self.env, **(env or {})}, self.cwd, self.log_dir)
        self.started.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"----- {proc.name} -----\n{proc.log()[-6000:]}" for proc in self.started)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()


@contextmanager
def processes(env: dict[str, str], cwd: Path, log_dir: Path) -> Iterator[Processes]:
    group = Processes(env, cwd, log_dir)
    try:
        yield group
    except BaseException:
        print(group.logs())  # shown by pytest for a failing test
        raise
    finally:
        group.stop_all()
