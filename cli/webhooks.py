"""``illustrations webhooks``: a client's default webhook URL and its signing secret."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from sqlalchemy import select

from shared.db import Database
from shared.settings import Settings

if TYPE_CHECKING:
    from cryptography.fernet import MultiFernet


@click.group()
def webhooks() -> None:
    """Webhooks (Standard Webhooks): default URL and signing secret per client."""


def _client_id(database: Database, name: str) -> str:
    from shared.models import Client

    with database.begin() as session:
        client_id = session.execute(select(Client.id).where(Client.name == name)).scalar_one_or_none()
    if client_id is None:
        raise click.ClickException(f"no client named {name} (create one with `illustrations keys create`)")
    return str(client_id)


def _database(settings: Settings) -> Database:
    if settings.is_sqlite:
        from shared.migrate import upgrade

        upgrade(settings)
    return Database(settings)


def _cipher(settings: Settings) -> MultiFernet:
    from shared.webhooks import secrets

    try:
        return secrets.cipher(settings)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@webhooks.command("url")
@click.option("--name", required=True, help="Client name.")
@click.argument("url", required=False)
@click.option("--clear", is_flag=True, help="Remove the default URL.")
@click.pass_obj
def webhooks_url(settings: Settings, name: str, url: str | None, clear: bool) -> None:
    """Set (or show, or --clear) where the client's events go when a request names no webhook_url."""
    from shared.fetch import ALLOWLIST_HINT, FetchBlocked, Fetcher, FetchMalformed, FetchUnreachable
    from shared.models import Client

    database = _database(settings)
    client_id = _client_id(database, name)
    if url is not None and clear:
        raise click.UsageError("give a URL or --clear, not both")
    if url is not None:
        if not url.lower().startswith(("http://", "https://")):
            raise click.BadParameter("must be an http(s) URL", param_hint="URL")
        try:  # the API's check of a webhook URL at submit: literal address, then the host resolved now
            Fetcher.from_settings(settings).check_resolved(url, timeout_s=settings.fetch_connect_timeout_s)
        except FetchMalformed as exc:
            raise click.BadParameter(str(exc), param_hint="URL") from None
        except FetchBlocked as exc:
            raise click.BadParameter(str(exc) + ALLOWLIST_HINT, param_hint="URL") from None
        except FetchUnreachable:
            pass  # does not resolve now: every delivery resolves it again
    with database.begin() as session:
        client = session.get_one(Client, client_id)
        if url is not None or clear:
            client.webhook_url = url
        current = client.webhook_url
    click.echo(f"client {name}: default webhook URL {current or '(none)'}")


@webhooks.command("secret")
@click.option("--name", required=True, help="Client name.")
@click.option("--rotate", is_flag=True, help="Make a new secret; the previous one keeps signing for "
              "ILLUSTRATIONS_WEBHOOK_SECRET_OVERLAP_S (both signatures are sent).")
@click.pass_obj
def webhooks_secret(settings: Settings, name: str, rotate: bool) -> None:
    """Print the client's current signing secret (whsec_...) alone on the last line; made if it has none."""
    from shared.webhooks import secrets

    database = _database(settings)
    client_id = _client_id(database, name)
    crypt = _cipher(settings)
    with database.begin() as session:
        if rotate:
            secret = secrets.rotate(session, client_id, crypt, settings.webhook_secret_overlap_s)
            click.echo(f"client {name}: new secret; the previous one signs too for "
                       f"{settings.webhook_secret_overlap_s:g} s", err=True)
        else:
            secret = secrets.live_secrets(session, client_id, crypt, create=True)[0]
    click.echo(secret)


@webhooks.command("reencrypt")
@click.pass_obj
def webhooks_reencrypt(settings: Settings) -> None:
    """Encrypt every stored secret with the first key of ILLUSTRATIONS_WEBHOOK_SECRET_KEYS (after adding a key)."""
    from shared.webhooks import secrets

    database = _database(settings)
    with database.begin() as session:
        count = secrets.reencrypt(session, _cipher(settings))
    click.echo(f"re-encrypted {count} secret(s)")


def register(group: click.Group) -> None:
    group.add_command(webhooks)
