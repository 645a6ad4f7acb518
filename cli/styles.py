"""LoRA styles: ``styles import`` (add a LoRA file as a new ready version), ``styles list``, ``styles remove``."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db import Database
from shared.settings import Settings


@click.group()
def styles() -> None:
    """LoRA styles (named, versioned, per client)."""


def _database(settings: Settings) -> Database:
    if settings.is_sqlite:
        from shared.migrate import upgrade

        upgrade(settings)
    return Database(settings)


def _client_id(session: Session, name: str) -> str:
    from shared.models import Client

    client_id = session.execute(select(Client.id).where(Client.name == name)).scalar_one_or_none()
    if client_id is None:
        raise click.ClickException(f"no client named {name!r} (`illustrations keys create --name {name}` makes one)")
    return str(client_id)


@styles.command("import")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--client", "client_name", required=True, help="The client (tenant) whose style this is.")
@click.option("--profile", default=None, help="The model profile the LoRA was made for (default: the configured one).")
@click.pass_obj
def styles_import(settings: Settings, name: str, file: Path, client_name: str, profile: str | None) -> None:
    """Add FILE (a LoRA in safetensors) as the next version of style NAME and make it active; prints NAME@VERSION.

    Every SDXL layout diffusers loads is accepted (PEFT, diffusers-trained, attention-processor, kohya), read with
    diffusers itself: run it where the worker's libraries are installed."""
    from shared import styles as registry
    from shared.lora_files import InvalidLoraFile
    from shared.storage import open_storage

    try:
        registry.validate_name(name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAME") from None
    try:
        from worker.pipeline.lora_layouts import read_lora
    except ImportError:
        raise click.ClickException("reading LoRA files needs the worker's libraries (torch, diffusers): run "
                                   "`illustrations styles import` in the worker image") from None
    try:
        lora = read_lora(file)
    except InvalidLoraFile as exc:
        raise click.ClickException(f"{file} is not a usable LoRA: {exc}") from None
    database = _database(settings)
    try:
        with database.begin() as session:
            version = registry.import_version(session, open_storage(settings), _client_id(session, client_name),
                                              name, file, profile or settings.model_profile, info=lora.info)
            label = f"{name}@{version.version}"
            click.echo(f"style {label}: rank {version.rank}, alpha {version.alpha:g}, for {version.base_profile}",
                       err=True)
    except InvalidLoraFile as exc:
        raise click.ClickException(f"{file} is not a usable LoRA: {exc}") from None
    finally:
        database.engine.dispose()
    click.echo(label)


@styles.command("list")
@click.option("--client", "client_name", required=True)
@click.pass_obj
def styles_list(settings: Settings, client_name: str) -> None:
    """Each style with its versions (status, rank, alpha); * marks the active version."""
    from shared.models import Style

    database = _database(settings)
    with database.begin() as session:
        client_id = _client_id(session, client_name)
        for style in session.execute(select(Style).where(Style.client_id == client_id).order_by(Style.name)).scalars():
            for version in style.versions:
                mark = "*" if version.version == style.active_version else " "
                click.echo(f"{mark} {style.name}@{version.version}\t{version.status}\t{version.base_profile}\t"
                           f"rank {version.rank}\talpha {version.alpha}")
    database.engine.dispose()


@styles.command("remove")
@click.argument("name")
@click.option("--client", "client_name", required=True)
@click.option("--version", type=click.IntRange(min=1), default=None, help="Only this version (default: the style).")
@click.pass_obj
def styles_remove(settings: Settings, name: str, client_name: str, version: int | None) -> None:
    """Remove a style or one version, and its files. Queued jobs naming it fail with style_not_found; a training
    of it stops."""
    from shared import styles as registry
    from shared.storage import open_storage

    database = _database(settings)
    try:
        with database.begin() as session:
            prefixes = registry.remove(session, _client_id(session, client_name), name, version)
    except registry.StyleNotFound as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        database.engine.dispose()
    storage = open_storage(settings)
    removed = 0
    for prefix in prefixes:  # after the commit: a failed commit leaves the files of the rows it kept
        removed += storage.delete_prefix(prefix)
    click.echo(f"removed {name}" + (f"@{version}" if version else "") + f" ({removed} file(s))")


def register(group: click.Group) -> None:
    group.add_command(styles)
