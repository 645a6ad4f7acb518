"""The README fits a screen and points into docs/; the docs' links resolve; nothing points outside the repository."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT

README = ROOT / "README.md"
DOCS = ROOT / "docs"
FIRST_SCREEN_LINES = 40
# Not the repository's own files: build output, caches, virtualenvs, the embedded mode's working folder.
SKIPPED_DIRS = {".git", ".venv", "var", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "build", "dist",
                "test-artifacts", "node_modules"}
# Places outside the repository that a checkout does not have (spelled in pieces so this file does not match).
OUTSIDE = ("../" + "shared/", "/work/" + "shared")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")


def first_screen() -> str:
    return "\n".join(README.read_text().splitlines()[:FIRST_SCREEN_LINES])


def code_blocks(text: str) -> list[str]:
    return re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.DOTALL)


def test_the_readme_fits_two_screens() -> None:
    assert len(README.read_text().splitlines()) <= 2 * 50


def test_the_first_screen_has_both_commands() -> None:
    screen = first_screen()
    assert "make demo" in screen
    assert "make test" in screen


@pytest.mark.parametrize("stage", ["API", "PostgreSQL", "outbox", "broker (Redis)", "prepare worker", "GPU worker",
                                   "storage (S3)", "webhook", "Flower", "/ops", "/metrics"])
def test_the_first_screen_has_the_data_path_diagram(stage: str) -> None:
    diagrams = [block for block in code_blocks(first_screen()) if "──▶" in block]
    assert any(stage in block for block in diagrams)


def repository_files() -> Iterator[Path]:
    for path in ROOT.rglob("*"):
        relative = path.relative_to(ROOT)
        if any(part in SKIPPED_DIRS or part.endswith(".egg-info") for part in relative.parts):
            continue
        if path.is_file():
            yield path


def test_nothing_points_outside_the_repository() -> None:
    pointing = []
    for path in repository_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue  # images, weights: not text
        pointing += [str(path.relative_to(ROOT)) for outside in OUTSIDE if outside in text]
    assert pointing == []


def github_anchor(heading: str) -> str:
    """The id GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {github_anchor(match) for match in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


def test_github_anchor_follows_githubs_rule() -> None:
    assert github_anchor("Controls (`illustrations ops ...`)") == "controls-illustrations-ops-"


def markdown_links() -> list[tuple[str, str]]:
    out = []
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        out += [(page.name, match["target"]) for match in LINK.finditer(text)]
    return out


def test_the_pages_link_to_each_other() -> None:
    assert len(markdown_links()) > 10


@pytest.mark.parametrize(("page", "target"), markdown_links())
def test_every_link_resolves(page: str, target: str) -> None:
    if target.startswith(("http://", "https://")):
        return
    base = README.parent if page == README.name else DOCS
    file_part, _, anchor = target.partition("#")
    resolved = (base / file_part).resolve() if file_part else base / page
    assert resolved.is_file()
    if anchor:
        assert anchor in anchors(resolved)


@pytest.mark.parametrize("page", [README, *sorted(DOCS.glob("*.md"))], ids=lambda page: page.name)
def test_every_table_starts_after_a_blank_line(page: Path) -> None:
    """Markdown renders a table glued to the paragraph above it as text."""
    lines = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL).splitlines()
    glued = [number + 1 for number, line in enumerate(lines[1:], 1)
             if line.startswith("|") and lines[number - 1].strip() and not lines[number - 1].startswith("|")]
    assert glued == []


def runbooks() -> list[tuple[str, str]]:
    rules = yaml.safe_load((ROOT / "infra" / "prometheus" / "alerts.yml").read_text())
    return [(rule["alert"], rule["annotations"]["runbook"]) for group in rules["groups"] for rule in group["rules"]]


@pytest.mark.parametrize(("alert", "runbook"), runbooks())
def test_every_alert_has_a_runbook_section(alert: str, runbook: str) -> None:
    target = runbook.split(":", 1)[0]
    file_part, _, anchor = target.partition("#")
    assert anchor in anchors(ROOT / file_part)


@pytest.mark.parametrize(("alert", "runbook"), runbooks())
def test_every_alert_is_explained_in_operations(alert: str, runbook: str) -> None:
    assert f"`{alert}`" in (DOCS / "operations.md").read_text()
