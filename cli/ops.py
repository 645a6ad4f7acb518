"""Operator controls: ``illustrations ops drain|pause|resume|pause-client|resume-client|retry-failed|cancel``.

- ``drain WORKER``: the worker stops consuming and finishes its running job (the Kubernetes preStop hook).
- ``pause QUEUE`` / ``resume QUEUE``: every worker stops (starts again) consuming the queue; recorded in the
  database, so a worker that starts meanwhile honours it. Jobs wait, queued; their messages stay in the broker.
- ``pause-client NAME`` / ``resume-client NAME``: the client's submissions are still accepted (202, ``queued``) but
  nothing of theirs is published or started; a message already in the broker is handed back at the claim. Resume:
  the relay publishes their waiting jobs within a relay interval. Running jobs finish.
- ``retry-failed``: a new job for each failed job matching the filters (terminal states never change).
- ``cancel``: queued jobs matching the filters end ``canceled`` at once, running ones stop at their next step.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import TYPE_CHECKING

import click

from shared.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

_DURATION = re.compile(r"^(?P<count>[0-9]+)(?P<unit>[smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class _DryRun(Exception):
    """Raised inside the transaction of a dry run: it rolls back what was done."""


def _duration(value: str | None) -> timedelta | None:
    if value is None:
        return None
    match = _DURATION.match(value)
    if match is None:
        raise click.BadParameter(f"{value!r}: give a number and a unit, e.g. 30m, 24h, 7d")
    return timedelta(**{_UNITS[match["unit"]]: int(match["count"])})


@click.group()
def ops() -> None:
    """Operator controls over queues, clients, jobs and workers."""


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
    app = _control(settings)
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


def _control(settings: Settings) -> Celery:
    """A Celery app that only sends control commands (the workers' own app lives in ``worker/``, absent from the API
    image; the broker and its settings are the same, ``shared.queue.celery_config``)."""
    from shared.queue import make_celery

    return make_celery(settings)


def _broadcast(settings: Settings, command: str, queue: str) -> list[str]:
    """Send a queue command to every worker; the names of those that now act on it."""
    app = _control(settings)
    replies = app.control.broadcast(command, arguments={"queue": queue}, reply=True, timeout=5.0) or []
    acting = []
    for reply in replies:
        for name, answer in reply.items():
            if str(answer.get("ok", "")).startswith(("paused", "resumed")):
                acting.append(name)
    return sorted(acting)


@ops.command("pause")
@click.argument("queue")
@click.pass_obj
def pause(settings: Settings, queue: str) -> None:
    """Stop every worker consuming QUEUE (running jobs finish); workers that start later honour it too."""
    from cli import ops_actions as actions
    from shared.db import Database

    with Database(settings).begin() as session:
        changed = actions.pause_queue(session, queue)
    workers = _broadcast(settings, "illustrations_pause_queue", queue)
    state = "paused" if changed else "already paused"
    click.echo(f"{queue}: {state}; stopped consuming: {', '.join(workers) or 'no worker was consuming it'}")


@ops.command("resume")
@click.argument("queue")
@click.pass_obj
def resume(settings: Settings, queue: str) -> None:
    """Let the workers started with QUEUE consume it again."""
    from cli import ops_actions as actions
    from shared.db import Database

    with Database(settings).begin() as session:
        changed = actions.resume_queue(session, queue)
    workers = _broadcast(settings, "illustrations_resume_queue", queue)
    state = "resumed" if changed else "was not paused"
    click.echo(f"{queue}: {state}; consuming again: {', '.join(workers) or 'no worker consumes it'}")


def _set_client(settings: Settings, name: str, paused: bool) -> bool:
    from cli import ops_actions as actions
    from shared.db import Database

    try:
        with Database(settings).begin() as session:
            return actions.set_client_paused(session, name, paused)
    except actions.UnknownClient as exc:
        raise click.ClickException(str(exc)) from None


@ops.command("pause-client")
@click.argument("name")
@click.pass_obj
def pause_client(settings: Settings, name: str) -> None:
    """Hold client NAME's jobs: still accepted (202, queued), none published or started until resume-client."""
    changed = _set_client(settings, name, True)
    click.echo(f"client {name}: {'paused' if changed else 'already paused'}")


@ops.command("resume-client")
@click.argument("name")
@click.pass_obj
def resume_client(settings: Settings, name: str) -> None:
    """Release client NAME's jobs: the relay publishes them within a relay interval."""
    changed = _set_client(settings, name, False)
    click.echo(f"client {name}: {'resumed' if changed else 'was not paused'}")


def _filters(func: click.decorators.FC) -> click.decorators.FC:
    for option in reversed([
        click.option("--client", "client", default=None, help="Only this client's jobs (name)."),
        click.option("--user", "user_id", default=None, help="Only this user's jobs."),
        click.option("--queue", default=None, help="Only jobs of this queue."),
        click.option("--older-than", default=None, help="Only jobs created longer ago than this (30m, 2h, 7d)."),
        click.option("--since", "newer_than", default=None, help="Only jobs created within this (30m, 24h, 7d)."),
        click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True),
        click.option("--dry-run", is_flag=True, help="Say what would be done; change nothing."),
    ]):
        func = option(func)
    return func


@ops.command("retry-failed")
@_filters
@click.option("--code", "codes", multiple=True, help="Only jobs that failed with this error code (repeatable).")
@click.pass_obj
def retry_failed(settings: Settings, client: str | None, user_id: str | None, queue: str | None,
                 older_than: str | None, newer_than: str | None, limit: int, dry_run: bool,
                 codes: tuple[str, ...]) -> None:
    """Submit each failed job matching the filters again, as a new job (prints "old -> new" per job)."""
    from cli import ops_actions as actions
    from shared.db import Database
    from shared.queue import Publisher, make_celery

    selection = actions.JobFilter(client=client, user_id=user_id, queue=queue, codes=codes,
                                  older_than=_duration(older_than), newer_than=_duration(newer_than), limit=limit)
    db = Database(settings)
    created: list[tuple[str, str, str]] = []
    try:
        with db.begin() as session:
            created = actions.retry_failed(session, selection)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    except actions.UnknownClient as exc:
        raise click.ClickException(str(exc)) from None
    for old, new, _ in created:
        click.echo(f"{old} -> {'(dry run)' if dry_run else new}")
    if dry_run or not created:
        click.echo(f"{len(created)} failed job(s) {'would be' if dry_run else 'were'} submitted again")
        return
    from shared import jobs

    publisher = Publisher(make_celery(settings, "illustrations-ops", producer=True))
    published = [new for _, new, queue in created if publisher.publish(new, queue)]
    with db.begin() as session:
        jobs.mark_all_published(session, published)
    click.echo(f"{len(created)} failed job(s) submitted again ({len(created) - len(published)} left to the relay)")


@ops.command("cancel")
@_filters
@click.option("--status", "statuses", multiple=True, type=click.Choice(["queued", "running"]),
              help="Only jobs in this state (default both).")
@click.option("--all", "everything", is_flag=True, help="Needed when no --client, --user or --queue narrows it.")
@click.pass_obj
def cancel(settings: Settings, client: str | None, user_id: str | None, queue: str | None, older_than: str | None,
           newer_than: str | None, limit: int, dry_run: bool, statuses: tuple[str, ...], everything: bool) -> None:
    """Cancel the jobs matching the filters: queued ones now, running ones at their next step."""
    from cli import ops_actions as actions
    from shared.db import Database

    if not (client or user_id or queue or everything):
        raise click.UsageError("narrow it with --client, --user or --queue, or say --all")
    selection = actions.JobFilter(client=client, user_id=user_id, queue=queue, statuses=statuses,
                                  older_than=_duration(older_than), newer_than=_duration(newer_than), limit=limit)
    canceled: list[str] = []
    flagged: list[str] = []
    try:
        with Database(settings).begin() as session:
            canceled, flagged = actions.cancel(session, selection)
            if dry_run:
                raise _DryRun
    except _DryRun:
        pass
    except actions.UnknownClient as exc:
        raise click.ClickException(str(exc)) from None
    verb = "would be" if dry_run else "were"
    click.echo(f"{len(canceled)} queued job(s) {verb} canceled, {len(flagged)} running job(s) {verb} asked to stop")
    for job_id in [*canceled, *flagged]:
        click.echo(job_id)


def register(group: click.Group) -> None:
    group.add_command(ops)
