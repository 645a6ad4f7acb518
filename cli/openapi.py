"""``illustrations openapi``: the OpenAPI document, as ``GET /openapi.json`` serves it, without starting anything.

The TypeScript client's types (``clients/typescript/src/schema.d.ts``) are generated from it: ``make client``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("openapi")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the document to this file (default: standard output).")
def openapi(output: Path | None) -> None:
    """Print (or write) the OpenAPI 3.1 document of the HTTP API."""
    from api import openapi_document

    text = json.dumps(openapi_document(), indent=2, ensure_ascii=False) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text, encoding="utf-8")
        click.echo(f"wrote {output}")


def register(group: click.Group) -> None:
    group.add_command(openapi)
