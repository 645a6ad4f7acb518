"""docs/configuration.md: rendered from the settings' own descriptions, and committed as rendered."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared import settings_docs
from shared.settings import Settings

CELL_SEPARATOR = re.compile(r"(?<!\\)\|")


def test_every_setting_has_a_description() -> None:
    """The page is rendered from the descriptions: a setting without one is a row that says nothing."""
    missing = [name for name, field in Settings.model_fields.items() if not (field.description or "").strip()]
    assert missing == []


def test_the_page_names_every_setting_as_its_variable() -> None:
    page = settings_docs.render()
    missing = [name for name in Settings.model_fields if f"| `ILLUSTRATIONS_{name.upper()}` |" not in page]
    assert missing == []


def test_every_row_has_four_cells() -> None:
    """A `|` in a description or a list of choices is escaped, so no row spills into extra columns."""
    rows = [line for line in settings_docs.render().splitlines() if line.startswith("| `ILLUSTRATIONS_")]
    spilled = [row for row in rows if len(CELL_SEPARATOR.split(row)) != 6]  # '' + 4 cells + ''
    assert spilled == []


def test_defaults_and_bounds_come_from_the_fields() -> None:
    page = settings_docs.render()
    assert "| `ILLUSTRATIONS_FLOWER_PORT` | `5555` | integer 1..65535 |" in page


def test_the_committed_page_is_current() -> None:
    committed = settings_docs.DOC_PATH.read_text() if settings_docs.DOC_PATH.exists() else ""
    assert committed == settings_docs.render(), "docs/configuration.md is stale: run `make docs`"


def test_check_fails_on_a_stale_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    page = tmp_path / "configuration.md"
    page.write_text("# Configuration\n")
    assert settings_docs.main([str(page), "--check"]) == 1
    assert "run `make docs`" in capsys.readouterr().err


def test_check_passes_on_the_page_it_wrote(tmp_path: Path) -> None:
    page = tmp_path / "configuration.md"
    settings_docs.main([str(page)])
    assert settings_docs.main([str(page), "--check"]) == 0
