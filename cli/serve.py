"""Long-running processes: ``api``, ``worker``, ``beat``, ``flower``."""

from __future__ import annotations

import os
import socket
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


def gunicorn_options(settings: Settings, bind: str) -> dict[str, Any]:
    """How the API is served (also what ``bench/load.py`` serves its bare Flask endpoint with, to compare)."""
    from shared import logs, prometheus

    def child_exit(_server: Any, worker: Any) -> None:
        prometheus.mark_dead(worker.pid)

    return {
        "bind": bind,
        "workers": settings.api_workers,
        "worker_class": "gthread",
        "threads": settings.api_threads,
        "timeout": settings.api_timeout_s,
        "graceful_timeout": settings.api_graceful_timeout_s,
        "accesslog": "-",
        # The request id (X-Request-ID, api.logs) names the request in the access line too.
        "access_log_format": '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s',
        "logconfig_dict": logs.gunicorn_logconfig(settings.log_level, settings.log_format),
        "child_exit": child_exit,
    }


@click.command()
@click.option("--bind", default=None, help="HOST:PORT (default: ILLUSTRATIONS_API_BIND).")
@click.pass_obj
def api(settings: Settings, bind: str | None) -> None:
    """Serve the HTTP API under gunicorn (gthread workers)."""
    from shared import prometheus

    bind = bind or settings.api_bind
    # Before anything imports prometheus_client: every gunicorn worker writes its samples here (/metrics merges them).
    prometheus.own_folder(settings.effective_metrics_dir, "api", bind)
    from gunicorn.app.base import BaseApplication

    from api import create_app

    _prepare(settings)

    options = gunicorn_options(settings, bind)

    class Server(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return create_app(settings)

    Server().run()


@click.command()
@click.option("--queues", "-Q", default=DEFAULT_WORKER_QUEUES, show_default=True,
              help="Comma-separated queues, in priority order.")
@click.option("--gpus", default=None,
              help="Generation workers: 0,1,... | all | cpu; one process per GPU, pinned (default: all visible, else "
                   "cpu).")
@click.option("--concurrency", "-c", default=None, type=click.IntRange(min=1),
              help="Pool processes (GPU workers: always 1; default 1).")
@click.option("--pool", default=None, type=click.Choice(["prefork", "threads", "solo"]),
              help="Pool (GPU workers: always prefork, which time limits need; default prefork).")
@click.option("--hostname", "-n", default=None, help="Node name (GPU workers: gpu<N>@<host> from the host given here).")
@click.pass_obj
def worker(settings: Settings, queues: str, gpus: str | None, concurrency: int | None, pool: str | None,
           hostname: str | None) -> None:
    """Run a Celery worker: per GPU for the generation queues; --queues illustrations.maintenance for a CPU worker.

    Generation workers (prefork): SIGTERM starts Celery's soft shutdown: the running job has
    ILLUSTRATIONS_WORKER_SOFT_SHUTDOWN_S to finish, then it is given back to the queue; the worker exits. Training
    workers keep Celery's warm shutdown, and their SIGTERM reaches the training, which checkpoints and goes back to
    the queue at once (worker.training.stop). Thread and solo pools (maintenance) keep the warm shutdown: their
    tasks take milliseconds.
    """
    from shared import prometheus

    if tasks.QUEUE_WEBHOOKS in queues.split(",") and settings.effective_public_base_url is None:
        raise click.ClickException(
            "a worker of the webhooks queue needs ILLUSTRATIONS_PUBLIC_BASE_URL outside the embedded mode (the address "
            "clients reach the API at, e.g. https://illustrations.example): webhook bodies carry absolute image URLs")
    generation = bool(set(queues.split(",")) & set(tasks.GPU_QUEUES))
    # Before anything imports prometheus_client: this worker tree's samples (a launcher's children inherit it).
    prometheus.own_folder(settings.effective_metrics_dir, "worker", hostname or f"{queues}@{socket.gethostname()}")
    if generation and (pool or "prefork") == "prefork":  # the cancel at the end of a soft shutdown signals children
        _remap_sigterm()
    _prepare(settings)
    if not set(queues.split(",")) & set(tasks.GPU_QUEUES):
        if gpus is not None:
            raise click.UsageError("--gpus is for workers of the generation queues")
        _celery_worker(settings, queues, concurrency or 1, pool or "prefork", hostname)
        return
    from worker import launcher

    try:
        devices = launcher.parse_gpus(gpus, launcher.visible_gpus())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--gpus") from None
    gpu_pinned = devices[0].cuda_visible_devices is not None
    if gpu_pinned and ((concurrency or 1) != 1 or (pool or "prefork") != "prefork"):
        raise click.UsageError("a GPU worker runs prefork with concurrency 1 (one pipeline per GPU)")
    host = launcher.host_part(hostname, socket.gethostname())
    if len(devices) == 1:
        device = devices[0]
        os.environ.update(device.environment())  # before anything can initialise CUDA in this process
        name = hostname if hostname and "@" in hostname else device.hostname(host)
        _celery_worker(settings, queues, concurrency or 1, pool or "prefork", name)
        return
    if settings.worker_metrics_port and prometheus.serves():
        prometheus.serve(settings.worker_metrics_port, settings.worker_metrics_address)
        os.environ[prometheus.INHERITED] = "1"  # the per-GPU workers write to this folder; this process serves it
    supervisor = launcher.Supervisor(
        commands={d.name: launcher.child_command(d, queues, d.hostname(host)) for d in devices},
        environments={d.name: d.environment() for d in devices},
        restart_delay_s=settings.worker_restart_delay_s,
        stop_timeout_s=settings.task_time_limit_s + 30,
    )
    raise SystemExit(supervisor.run())


def _celery_worker(settings: Settings, queues: str, concurrency: int, pool: str, hostname: str | None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never a download at job time: weights come from disk
    from shared import prometheus
    from worker.celery_app import app

    if settings.worker_metrics_port and prometheus.serves():
        prometheus.serve(settings.worker_metrics_port, settings.worker_metrics_address)

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
    """Run Flower, the Celery monitor (its /metrics and /healthcheck are open: bind it privately).

    Basic auth (ILLUSTRATIONS_FLOWER_BASIC_AUTH=user:password) is required outside the embedded mode (a broker URL is
    configured): without it Flower refuses to start, unless ILLUSTRATIONS_FLOWER_UNAUTHENTICATED says it runs
    behind an authenticating proxy. The embedded demo (no broker URL, loopback only) runs without auth.
    """
    if not settings.flower_basic_auth and not settings.embedded_broker and not settings.flower_unauthenticated:
        raise click.ClickException(
            "Flower needs Basic auth outside the embedded demo: set ILLUSTRATIONS_FLOWER_BASIC_AUTH=user:password "
            "(or ILLUSTRATIONS_FLOWER_UNAUTHENTICATED=true behind an authenticating proxy)")
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
