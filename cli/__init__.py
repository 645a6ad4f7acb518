"""The ``illustrations`` command: every process and admin action of the service.

It sits above both sides: the one package allowed to import ``api``, ``worker`` and ``shared``. Every image carries
it, but the API image has no ``worker/`` (and no torch): each subcommand imports the side it needs when it runs, so
``illustrations api``, ``db upgrade`` and ``keys`` work there, and importing this package imports neither side.
"""

from __future__ import annotations

import click

from cli import admin, client, models, openapi, ops, serve, stack, styles, webhooks
from shared.settings import SettingsError, get_settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def main(ctx: click.Context) -> None:
    """AutoBio Illustrations: memoir memories to illustrations with consistent people."""
    try:
        settings = get_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    from shared import logs

    logs.configure(settings.log_level, settings.log_format)
    ctx.obj = settings


for module in (serve, admin, models, styles, client, ops, stack, webhooks, openapi):
    module.register(main)
