"""Operator controls: ``illustrations ops ...``."""

from __future__ import annotations

import time

import click

from shared.settings import Settings


@click.group()
def ops() -> None:
    """Operator controls over running workers."""


@ops.command("drain")
@click.argument("worker_name")
@click.option("--timeout", "timeout_s", type=float, default=720.0, show_default=True,
              help="How long to wait for the running job to finish.")
@click.pass_obj
def drain(settings: Settings, worker_name: str, timeout_s: float) -> None:
    """Stop WORKER consuming (it finishes its running job), then wait until it is idle.

    Run it before stopping a worker (the Kubernetes preStop hook does): queued jobs stay in the queue for the
    other workers instead of being prefetched by one about to stop.
    """
    from worker.celery_app import app

    replies = app.control.inspect([worker_name], timeout=5.0).active_queues() or {}
    if worker_name not in replies:
        raise click.ClickException(f"worker {worker_name} did not answer")
    for queue in replies[worker_name]:
        app.control.cancel_consumer(queue["name"], destination=[worker_name], reply=True, timeout=5.0)
    click.echo(f"{worker_name}: stopped consuming {', '.join(q['name'] for q in replies[worker_name])}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        active = (app.control.inspect([worker_name], timeout=5.0).active() or {}).get(worker_name)
        if active is not None and not active:
            click.echo(f"{worker_name}: idle")
            return
        time.sleep(1.0)
    raise click.ClickException(f"{worker_name} still busy after {timeout_s:.0f} s")


def register(group: click.Group) -> None:
    group.add_command(ops)
