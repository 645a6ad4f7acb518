"""Long-running processes: ``api``, ``worker``, ``beat``, ``flower``."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from shared import tasks
from shared.embedded import ensure_redis
from shared.migrate import upgrade
from shared.settings import Settings

DEFAULT_WORKER_QUEUES = ",".join(tasks.GPU_QUEUES)


def _prepare(settings: Settings) -> None:
    """Embedded mode: any process may start first, so each makes sure the broker and the schema are there."""
    ensure_redis(settings)
    if settings.is_sqlite:
        upgrade(settings)


@click.command()
@click.option("--bind", default=None, help="HOST:PORT (default: ILLUSTRATIONS_API_BIND).")
@click.pass_obj
def api(settings: Settings, bind: str | None) -> None:
    """Serve the HTTP API under gunicorn (gthread workers)."""
    from gunicorn.app.base import BaseApplication

    from api import create_app

    _prepare(settings)

    class Server(BaseApplication):
        def load_config(self) -> None:
            options = {
                "bind": bind or settings.api_bind,
                "workers": settings.api_workers,
                "worker_class": "gthread",
                "threads": settings.api_threads,
                "timeout": settings.api_timeout_s,
                "graceful_timeout": settings.api_graceful_timeout_s,
                "accesslog": "-",
                "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms',
            }
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return create_app(settings)

    Server().run()


@click.command()
@click.option("--queues", "-Q", default=DEFAULT_WORKER_QUEUES, show_default=True,
              help="Comma-separated queues, in priority order.")
@click.option("--concurrency", "-c", default=1, show_default=True, help="Pool processes (1 per GPU).")
@click.option("--pool", default="prefork", show_default=True, type=click.Choice(["prefork", "threads", "solo"]))
@click.option("--hostname", "-n", default=None, help="Worker node name (default: celery's).")
@click.pass_obj
def worker(settings: Settings, queues: str, concurrency: int, pool: str, hostname: str | None) -> None:
    """Run a Celery worker (generation by default; --queues illustrations.maintenance for a CPU worker).

    With the prefork pool, SIGTERM starts Celery's soft shutdown: the running job has
    ILLUSTRATIONS_WORKER_SOFT_SHUTDOWN_S to finish, then it is given back to the queue; the worker exits. Thread and
    solo pools (maintenance) keep Celery's warm shutdown: their tasks take milliseconds.
    """
    if pool == "prefork":  # the cancel at the end of a soft shutdown signals pool children (short tasks: warm)
        _remap_sigterm()
    _prepare(settings)
    from worker.celery_app import app

    argv = ["worker", "--queues", queues, "--concurrency", str(concurrency), "--pool", pool,
            "--loglevel", settings.log_level, "--without-mingle", "--without-gossip"]
    if hostname:
        argv += ["--hostname", hostname]
    app.worker_main(argv)


def _remap_sigterm() -> None:
    """SIGTERM means "soft shutdown" (Celery >= 5.5): billiard reads REMAP_SIGTERM when it is first imported."""
    if os.environ.setdefault("REMAP_SIGTERM", "SIGQUIT") != "SIGQUIT":
        return  # ops chose otherwise (REMAP_SIGTERM set to something else): their call
    if "billiard.common" in sys.modules:
        import billiard.common

        if billiard.common.REMAP_SIGTERM != "SIGQUIT":
            raise click.ClickException("billiard was imported before REMAP_SIGTERM could be set")


@click.command()
@click.pass_obj
def beat(settings: Settings) -> None:
    """Run the scheduler of maintenance tasks (outbox relay, lease sweep). Exactly one per deployment."""
    _prepare(settings)
    from worker.celery_app import app

    settings.var_path.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", settings.log_level,
               "--schedule", str(settings.var_path / "celerybeat-schedule")])


@click.command()
@click.option("--port", type=int, default=None)
@click.option("--address", default=None)
@click.pass_obj
def flower(settings: Settings, port: int | None, address: str | None) -> None:
    """Run Flower, the Celery monitor (its /metrics and /healthcheck are open: bind it privately)."""
    _prepare(settings)
    from worker.celery_app import app

    argv = ["flower", f"--port={port or settings.flower_port}", f"--address={address or settings.flower_address}"]
    if settings.flower_basic_auth:
        argv.append(f"--basic-auth={settings.flower_basic_auth}")
    else:
        os.environ.setdefault("FLOWER_UNAUTHENTICATED_API", "true")
    app.start(argv)


def register(group: click.Group) -> None:
    for command in (api, worker, beat, flower):
        group.add_command(command)
