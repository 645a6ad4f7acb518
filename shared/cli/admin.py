"""Administration: ``db``, ``keys``."""

from __future__ import annotations

import click
from sqlalchemy import select

from shared.db import Database
from shared.keys import SCOPES, create_key
from shared.settings import Settings


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
@click.pass_obj
def keys_create(settings: Settings, name: str, scopes: tuple[str, ...]) -> None:
    """Create a key; the key alone is printed on the last line (shown once, stored hashed)."""
    from shared.migrate import upgrade

    if settings.is_sqlite:
        upgrade(settings)
    database = Database(settings)
    with database.begin() as session:
        key, plaintext = create_key(session, name, scopes or ("generate",))
        click.echo(f"client {name}: key {key.prefix}... scopes {','.join(key.scopes)}", err=True)
    click.echo(plaintext)


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
        for key, client_name in session.execute(query):
            state = "revoked" if key.revoked_at else "active"
            used = key.last_used_at.isoformat() if key.last_used_at else "never"
            click.echo(f"{client_name}\t{key.prefix}\t{','.join(key.scopes)}\t{state}\tlast used {used}")


def register(group: click.Group) -> None:
    for command in (db, keys):
        group.add_command(command)
