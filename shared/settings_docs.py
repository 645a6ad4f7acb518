"""``docs/configuration.md``, rendered from the settings' own descriptions (``make docs`` writes it).

Every field of ``shared.settings.Settings`` becomes one row: the variable (``ILLUSTRATIONS_<NAME>``), its default,
the values it takes (from the type and its bounds) and its description. Rows are grouped under the section comments
of the class (``# --- Places ---``), in the order the fields are declared. A test compares the committed file with
``render()``, so the page cannot fall behind the code.

``python -m shared.settings_docs [PATH]`` writes the page (default: ``docs/configuration.md`` of this checkout);
``--check`` only compares, and exits 1 when the file is stale.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import types
from pathlib import Path
from typing import Any, Final, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from shared.settings import ENV_PREFIX, Settings

DOC_PATH: Final = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
SECTION: Final = re.compile(r"^    # --- (?P<title>.+?) -+$")
FIELD: Final = re.compile(r"^    (?P<name>[a-z_][a-z0-9_]*): ")

HEADER: Final = f"""# Configuration

<!-- Generated from the descriptions in shared/settings.py by `make docs` (python -m shared.settings_docs).
     Edit those descriptions, not this file: a test fails when it is stale. -->

One typed settings object (`shared/settings.py`) read once from `{ENV_PREFIX}*` environment variables; a malformed
value, or timers that contradict each other (a heartbeat not below the lease, a hard time limit not above the soft
one, ...), stops the process at start with a message naming the variable. With nothing set you get the embedded
mode: SQLite and local storage under `./var/`, an embedded Redis, the `tiny` model. URLs switch each part to
PostgreSQL, Redis (or RabbitMQ), S3 and `sdxl`. Every timer is a setting, so tests run them in seconds.

Booleans are `true` or `false`; lists and objects are JSON (`'["10.0.0.0/8"]'`). Times are seconds unless the
name ends in `_MS`. Secrets (database and broker URLs with passwords, S3 keys, Flower's Basic auth, the webhook
secret keys) come from the orchestrator's Secret, never from a file in the repository or an image.
"""


def sections() -> list[tuple[str, list[str]]]:
    """The field names under each section comment of ``Settings``, in declaration order."""
    out: list[tuple[str, list[str]]] = []
    for line in inspect.getsource(Settings).splitlines():
        if match := SECTION.match(line):
            out.append((match["title"], []))
        elif (match := FIELD.match(line)) and match["name"] in Settings.model_fields:
            if not out:
                out.append(("Settings", []))
            out[-1][1].append(match["name"])
    listed = [name for _, names in out for name in names]
    missing = [name for name in Settings.model_fields if name not in listed]
    if missing:  # a field declared in a way the pattern does not see: show it rather than lose it
        out.append(("Other", missing))
    return out


def variable(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


def _number(value: Any) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if value is None or value == "":
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float):
        return f"`{_number(value)}`"
    if isinstance(value, list):
        return "`" + json.dumps([_plain(item) for item in value]) + "`" if value else "`[]`"
    return f"`{value}`"


def _plain(item: Any) -> Any:
    return int(item) if isinstance(item, float) and item.is_integer() else item


def _bounds(field: FieldInfo) -> str:
    low = high = ""
    for item in field.metadata:
        if isinstance(item, annotated_types.Ge):
            low = f"≥ {_number(item.ge)}"
        elif isinstance(item, annotated_types.Gt):
            low = f"> {_number(item.gt)}"
        elif isinstance(item, annotated_types.Le):
            high = f"≤ {_number(item.le)}"
        elif isinstance(item, annotated_types.Lt):
            high = f"< {_number(item.lt)}"
    if low.startswith("≥") and high.startswith("≤"):
        return f"{low[2:]}..{high[2:]}"
    return ", ".join(part for part in (low, high) if part)


def _kind(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{choice}`" for choice in get_args(annotation))
    if origin in (Union, types.UnionType):
        kinds = [_kind(arg) for arg in get_args(annotation) if arg is not type(None)]
        return " or ".join(kinds)
    if origin is list:
        (item,) = get_args(annotation)
        return "JSON list of " + {str: "strings", float: "numbers", int: "integers"}.get(item, _kind(item))
    if annotation is bool:
        return "`true` \\| `false`"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return "JSON object"
    names = {int: "integer", float: "number", str: "text", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def values_text(field: FieldInfo) -> str:
    bounds = _bounds(field)
    kind = _kind(field.annotation)
    return f"{kind} {bounds}" if bounds else kind


def _cell(text: str) -> str:
    """One table cell: on one line, a ``|`` escaped so it does not end the cell."""
    return " ".join(text.split()).replace("|", "\\|")


def render() -> str:
    """The whole page."""
    parts = [HEADER]
    for title, names in sections():
        if not names:  # a section comment over methods (derived values), not settings
            continue
        parts.append(f"\n## {title}\n\n| variable | default | values | meaning |\n|---|---|---|---|\n")
        for name in names:
            field = Settings.model_fields[name]
            row = [f"`{variable(name)}`", default_text(field), values_text(field), _cell(field.description or "")]
            parts.append("| " + " | ".join(row) + " |\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.settings_docs", description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path, default=DOC_PATH, help="default: docs/configuration.md")
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 when the file is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.path.read_text() if args.path.exists() else ""
        if current != text:
            print(f"{args.path} is stale: run `make docs`", file=sys.stderr)
            return 1
        return 0
    args.path.parent.mkdir(parents=True, exist_ok=True)
    args.path.write_text(text)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
