"""The styles registry on real PostgreSQL and storage, and `illustrations styles` through the CLI."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from shared import styles
from shared.db import Database
from shared.models import Style, StyleVersion
from shared.settings import Settings
from shared.storage import open_storage
from tests.helpers import lora, make_key, new_client


def test_parse_names_and_versions() -> None:
    assert styles.parse_ref("autobio-watercolor") == styles.StyleRef("autobio-watercolor", None)
    assert styles.parse_ref("autobio-watercolor@3") == styles.StyleRef("autobio-watercolor", 3)
    assert str(styles.StyleRef("a", 2)) == "a@2"
    for bad, message in (("", "a style name"), ("-x", "a style name"), ("a b", "a style name"),
                         ("x@", "positive integer"), ("x@0", "positive integer"), ("x@v2", "positive integer"),
                         ("x" * 101, "a style name")):
        with pytest.raises(ValueError, match=message):
            styles.parse_ref(bad)


def test_import_makes_ready_active_versions_and_resolve_follows_them(db: Database, settings: Settings,
                                                                     tmp_path: Path) -> None:
    storage = open_storage(settings)
    client_id = new_client(db)
    with db.begin() as session:
        first = styles.import_version(session, storage, client_id, "ink", lora(tmp_path / "a.safetensors"), "tiny")
        second = styles.import_version(session, storage, client_id, "ink",
                                       lora(tmp_path / "b.safetensors", rank=8, alpha=4), "tiny")
        session.refresh(second)
        assert (first.version, second.version) == (1, 2)
        assert second.status == "ready"
        assert second.rank == 8
        assert second.alpha == 4.0
        assert second.source == "import"
        assert second.finished_at is not None
        assert second.created_at is not None
    assert storage.get(second.storage_key or "") == (tmp_path / "b.safetensors").read_bytes()
    with db.begin() as session:
        active = styles.resolve(session, client_id, styles.parse_ref("ink"))
        pinned = styles.resolve(session, client_id, styles.parse_ref("ink@1"))
        assert (active.label, pinned.label) == ("ink@2", "ink@1")
        assert pinned.sha256 == first.sha256
        assert pinned.base_profile == "tiny"
        with pytest.raises(styles.StyleNotFound, match="no version 3"):
            styles.resolve(session, client_id, styles.parse_ref("ink@3"))
        with pytest.raises(styles.StyleNotFound, match="no style named 'oil'"):
            styles.resolve(session, client_id, styles.parse_ref("oil"))
        with pytest.raises(styles.StyleNotFound):  # another client's style is unknown here
            styles.resolve(session, new_client(db), styles.parse_ref("ink"))
        # A version that is not ready (training, later) is never used.
        session.get_one(StyleVersion, (active.style_id, 1)).status = "failed"
        with pytest.raises(styles.StyleNotFound, match="version 1 of style 'ink' is failed"):
            styles.resolve(session, client_id, styles.parse_ref("ink@1"))
    with db.begin() as session:
        prefixes = styles.remove(session, client_id, "ink", 2)
        assert prefixes == [f"styles/{active.style_id}/2/"]
        assert (second.storage_key or "").startswith(prefixes[0])
        assert session.execute(select(Style.active_version).where(Style.id == active.style_id)).scalar_one() is None
        prefixes = styles.remove(session, client_id, "ink")
        assert prefixes == [f"styles/{active.style_id}/1/"]
        assert (first.storage_key or "").startswith(prefixes[0])
        assert styles.find_style(session, client_id, "ink") is None


def test_cli_imports_lists_and_removes_styles(db: Database, settings: Settings, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import main

    name = f"cli-{uuid.uuid4().hex[:8]}"
    make_key(db, name)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, list(args), obj=settings, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    # main() builds settings from the environment: point it at this test's database and storage.
    for key, value in {"DATABASE_URL": settings.database_url, "STORAGE_URL": settings.storage_url,
                       "VAR_DIR": str(settings.var_dir), "BROKER_URL": settings.broker_url}.items():
        monkeypatch.setenv(f"ILLUSTRATIONS_{key}", value)
    from shared.settings import get_settings

    get_settings.cache_clear()
    try:
        out = run("styles", "import", "sepia", str(lora(tmp_path / "s.safetensors")), "--client", name)
        assert out.strip().splitlines()[-1] == "sepia@1"
        run("styles", "import", "sepia", str(lora(tmp_path / "t.safetensors")), "--client", name)
        listing = run("styles", "list", "--client", name)
        assert "  sepia@1\tready\ttiny\trank 4\talpha 8.0" in listing
        assert "* sepia@2\tready" in listing
        (tmp_path / "junk.safetensors").write_bytes(b"junk")
        bad = runner.invoke(main, ["styles", "import", "sepia", str(tmp_path / "junk.safetensors"), "--client", name])
        assert bad.exit_code == 1
        assert "is not a usable LoRA: not a readable safetensors file" in bad.output
        unknown = runner.invoke(main, ["styles", "list", "--client", "nobody-at-all"])
        assert unknown.exit_code == 1
        assert "no client named 'nobody-at-all'" in unknown.output
        assert "removed sepia (2 file(s))" in run("styles", "remove", "sepia", "--client", name)
        assert run("styles", "list", "--client", name) == ""
        assert not list((Path(settings.storage_url) / "styles").rglob("*.safetensors"))
    finally:
        get_settings.cache_clear()
