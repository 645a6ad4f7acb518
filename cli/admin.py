"""Administration: ``db``, ``keys``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click
from sqlalchemy import select

from shared.db import Database
from shared.models import DEFAULT_SCOPES, SCOPES
from shared.settings import Settings

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def _duration(value: str | None) -> timedelta | None:
    if value is None:
        return None
    match = _DURATION.match(value.strip())
    if not match:
        raise click.BadParameter("use a number and a unit: 3600s, 90m, 12h, 30d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_obj
def db_upgrade(settings: Settings, revision: str) -> None:
    """Apply migrations (run before starting a new release)."""
    from shared.migrate import upgrade

    upgrade(settings, revision)
    click.echo(f"database at {revision}")


@click.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--name", required=True, help="Client (tenant) name; created if absent.")
@click.option("--scope", "scopes", multiple=True, type=click.Choice(SCOPES), help="Repeatable; default: generate.")
@click.option("--expires-in", default=None, help="Lifetime, e.g. 90d or 12h (default: no expiry).")
@click.pass_obj
def keys_create(settings: Settings, name: str, scopes: tuple[str, ...], expires_in: str | None) -> None:
    """Create a key; the key alone is printed on the last line (shown once, stored hashed)."""
    from api.keys import create_key
    from shared.migrate import upgrade

    lifetime = _duration(expires_in)
    if settings.is_sqlite:
        upgrade(settings)
    database = Database(settings)
    expires_at = datetime.now(UTC) + lifetime if lifetime is not None else None
    with database.begin() as session:
        key, plaintext = create_key(session, name, scopes or DEFAULT_SCOPES, expires_at=expires_at)
        until = f" expires {expires_at.isoformat(timespec='seconds')}" if expires_at else ""
        click.echo(f"client {name}: key {key.prefix}... scopes {','.join(key.scopes)}{until}", err=True)
    click.echo(plaintext)


@keys.command("revoke")
@click.argument("prefix")
@click.option("--name", default=None, help="Only this client's keys.")
@click.pass_obj
def keys_revoke(settings: Settings, prefix: str, name: str | None) -> None:
    """Revoke the key(s) whose prefix (as `keys list` shows it) starts with PREFIX; effective at once."""
    from api.keys import revoke

    database = Database(settings)
    try:
        with database.begin() as session:
            revoked = revoke(session, prefix, name)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not revoked:
        raise click.ClickException(f"no live key with prefix {prefix}")
    click.echo(f"revoked {len(revoked)} key(s)")


@keys.command("list")
@click.option("--name", default=None, help="Only this client's keys.")
@click.pass_obj
def keys_list(settings: Settings, name: str | None) -> None:
    """List keys by prefix (never the keys themselves)."""
    from shared.models import ApiKey, Client

    database = Database(settings)
    with database.begin() as session:
        query = select(ApiKey, Client.name).join(Client).order_by(Client.name, ApiKey.created_at)
        if name:
            query = query.where(Client.name == name)
        now = datetime.now(UTC)
        for key, client_name in session.execute(query):
            if key.revoked_at:
                state = "revoked"
            elif key.expires_at and key.expires_at <= now:
                state = "expired"
            else:
                state = "active"
            used = key.last_used_at.isoformat(timespec="seconds") if key.last_used_at else "never"
            expires = key.expires_at.isoformat(timespec="seconds") if key.expires_at else "never"
            click.echo(f"{client_name}\t{key.prefix}\t{','.join(key.scopes)}\t{state}\tlast used {used}"
                       f"\texpires {expires}")


def register(group: click.Group) -> None:
    for command in (db, keys):
        group.add_command(command)
