"""The ``illustrations`` command: every process and admin action of the service.

It lives in ``shared`` because both images (API without torch, workers with it) carry it; each subcommand imports
what it needs when it runs, so ``illustrations api`` never imports torch.
"""

from __future__ import annotations

import click

from shared.cli import admin, client, models, ops, serve, stack, styles, webhooks
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


for module in (serve, admin, models, styles, client, ops, stack, webhooks):
    module.register(main)
