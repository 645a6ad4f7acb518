"""The embedded stack on one machine: ``up``, ``down``, ``status`` and ``demo``.

``up`` starts the API, a generation worker, a maintenance worker, a training worker, beat and Flower as background
processes (logs in ``var/log``, pids in ``var/run``), each sharing the embedded Redis and SQLite under ``var/``.
``down`` stops them and the embedded Redis. A small supervisor of our own: the processes are the same commands ops
run one by one, and the embedded Redis needs one owner (``shared.embedded``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import requests

from shared import tasks
from shared.embedded import ensure_redis, stop_redis
from shared.settings import Settings, address_url

STOP_TIMEOUT_S = 30.0


def _processes(settings: Settings, api_bind: str, flower_port: int) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "cli"]
    return {
        "api": [*cli, "api", "--bind", api_bind],
        "worker": [*cli, "worker"],  # one per visible GPU (gpu<N>@host), else cpu@host
        "maintenance": [*cli, "worker", "--queues", ",".join(tasks.CPU_QUEUES), "--pool", "threads",
                        "--concurrency", "2", "--hostname", "maintenance@%h"],
        # Style training (POST /v1/styles): idle until a training comes; torch is loaded for the first one.
        "training": [*cli, "worker", "--queues", tasks.QUEUE_TRAINING, "--hostname", "train@%h"],
        "beat": [*cli, "beat"],
        "flower": [*cli, "flower", "--port", str(flower_port)],
    }


def _run_dir(settings: Settings) -> Path:
    return settings.var_path / "run"


def _pid(settings: Settings, name: str) -> int | None:
    try:
        pid = int((_run_dir(settings) / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def _free_port(preferred: int) -> int:
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", preferred)) != 0:
            return preferred
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_ready(url: str, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise click.ClickException(f"{what} did not become ready at {url} within {timeout_s:.0f} s; see var/log/")


def _wait_worker(settings: Settings, timeout_s: float) -> None:
    from worker.celery_app import app

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        replies = app.control.ping(timeout=1.0)
        if any(name.startswith(("gpu", "cpu@")) for reply in replies for name in reply):  # a generation worker
            return
    raise click.ClickException("the worker did not answer within the start timeout; see var/log/worker.log")


def start_stack(settings: Settings, api_bind: str | None = None, flower_port: int | None = None,
                timeout_s: float = 120.0) -> dict[str, str]:
    """Start what is not running yet; returns the names it started and the API and Flower URLs."""
    from shared.migrate import upgrade

    ensure_redis(settings)
    if settings.is_sqlite:
        upgrade(settings)
    if settings.model_profile == "tiny":
        from worker.pipeline.profiles import missing_files, resolve_profile
        from worker.pipeline.tiny import make_tiny, outdated

        profile = resolve_profile("tiny", settings.effective_model_dir)
        if missing_files(profile) or outdated(profile.root):
            click.echo(f"generating the tiny model in {profile.root}")
            make_tiny(profile.root)
    api_bind = api_bind or settings.api_bind
    flower_port = flower_port or settings.flower_port
    (settings.var_path / "log").mkdir(parents=True, exist_ok=True)
    _run_dir(settings).mkdir(parents=True, exist_ok=True)
    started = []
    # Absolute URLs in answers and webhook bodies: the API's own address, unless a public one is configured.
    env = {**os.environ, "ILLUSTRATIONS_PUBLIC_BASE_URL": settings.public_base_url or address_url(api_bind)}
    for name, argv in _processes(settings, api_bind, flower_port).items():
        if _pid(settings, name) is not None:
            continue
        with open(settings.var_path / "log" / f"{name}.log", "ab") as log_file:
            process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True, env=env)
        (_run_dir(settings) / f"{name}.pid").write_text(str(process.pid))
        started.append(name)
    api_url = f"http://{api_bind}"
    _wait_ready(f"{api_url}/readyz", timeout_s, "the API")
    _wait_worker(settings, timeout_s)
    return {"started": ",".join(started), "api": api_url, "flower": f"http://127.0.0.1:{flower_port}"}


def stop_stack(settings: Settings, names: list[str] | None = None, stop_broker: bool = True) -> list[str]:
    """SIGTERM the stack's processes (then SIGKILL after a grace period) and stop the embedded Redis."""
    stopped = []
    candidates = names or [path.stem for path in sorted(_run_dir(settings).glob("*.pid"))]
    pids = {name: pid for name in candidates if (pid := _pid(settings, name)) is not None}
    for pid in pids.values():
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for name, pid in pids.items():
        while _pid(settings, name) is not None and time.monotonic() < deadline:
            _reap(pid)
            time.sleep(0.1)
        if _pid(settings, name) is not None:
            os.killpg(pid, signal.SIGKILL)
        (_run_dir(settings) / f"{name}.pid").unlink(missing_ok=True)
        stopped.append(name)
    for name in candidates:
        (_run_dir(settings) / f"{name}.pid").unlink(missing_ok=True)
    if stop_broker and stop_redis(settings):
        stopped.append("redis")
    return stopped


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@click.command()
@click.pass_obj
def up(settings: Settings) -> None:
    """Start the embedded stack in the background (API, workers, beat, Flower, Redis)."""
    info = start_stack(settings)
    click.echo(f"API {info['api']}  Flower {info['flower']}  logs {settings.var_path / 'log'}")


@click.command()
@click.pass_obj
def down(settings: Settings) -> None:
    """Stop the embedded stack and its Redis."""
    stopped = stop_stack(settings)
    click.echo("stopped: " + (", ".join(stopped) or "nothing was running"))


@click.command()
@click.pass_obj
def status(settings: Settings) -> None:
    """Show which processes of the embedded stack run."""
    from shared.embedded import is_running

    for name in ("api", "worker", "maintenance", "training", "beat", "flower"):
        pid = _pid(settings, name)
        click.echo(f"{name:12} {'running pid ' + str(pid) if pid else 'stopped'}")
    click.echo(f"{'redis':12} {'running' if is_running(settings) else 'stopped'}")


@click.command()
@click.option("--keep-running", is_flag=True, help="Leave the stack up afterwards.")
@click.pass_obj
def demo(settings: Settings, keep_running: bool) -> None:
    """The whole service on this machine: start it, submit a job with a reference photo, show the result."""
    from api.keys import create_key
    from cli.client import ApiClient, submit_and_wait
    from cli.demo_image import write_demo_face
    from shared.db import Database
    from shared.embedded import is_running

    host, _, port = settings.api_bind.rpartition(":")
    api_bind = f"{host}:{_free_port(int(port))}"
    flower_port = _free_port(settings.flower_port)
    broker_was_running = is_running(settings)
    click.echo("starting the embedded stack (API, worker, beat, Flower, Redis) ...")
    info = start_stack(settings, api_bind=api_bind, flower_port=flower_port)
    started = [name for name in info["started"].split(",") if name]
    try:
        click.echo(f"API {info['api']}   Flower {info['flower']}")
        with Database(settings).begin() as session:
            _, key = create_key(session, "demo")
        reference = write_demo_face(settings.var_path / "demo" / "grandma.png")
        click.echo(f"submitting a job with the reference photo {reference} ...")
        job, paths = submit_and_wait(
            ApiClient(info["api"], key),
            "grandma teaching me to ride a bike, watercolor",
            "demo-user",
            [reference],
            {"width": 256, "height": 256, "steps": 20, "seed": 42},
            wait=True,
            timeout_s=300,
            download_dir=settings.var_path / "demo",
        )
        click.echo(json.dumps(job, indent=2))
        for path in paths:
            click.echo(f"image: {path}")
        if job["status"] != "succeeded":
            raise click.ClickException(f"the demo job ended {job['status']}")
    finally:
        if not keep_running:
            stopped = stop_stack(settings, names=started, stop_broker=not broker_was_running)
            click.echo("stopped: " + ", ".join(stopped))


def register(group: click.Group) -> None:
    for command in (up, down, status, demo):
        group.add_command(command)
