"""Settings: embedded defaults, typed parsing, and malformed values named at start."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import SettingsError, get_settings, load_settings


def test_defaults_are_the_embedded_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert settings.effective_database_url == f"sqlite:///{tmp_path / 'var' / 'illustrations.db'}"
    assert settings.effective_broker_url == f"redis+socket://{tmp_path / 'var' / 'redis' / 'redis.sock'}"
    assert settings.effective_storage_url == str(tmp_path / "var" / "storage")
    assert settings.model_profile == "tiny"
    assert settings.effective_model_dir == tmp_path / "var" / "models" / "tiny"
    assert settings.is_sqlite
    assert settings.embedded_broker


def test_variables_are_parsed_and_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ILLUSTRATIONS_DATABASE_URL", "postgresql+psycopg2://db/x")
    monkeypatch.setenv("ILLUSTRATIONS_LEASE_S", "12.5")
    monkeypatch.setenv("ILLUSTRATIONS_HEARTBEAT_S", "2")
    monkeypatch.setenv("ILLUSTRATIONS_MODEL_PROFILE", "sdxl")
    monkeypatch.setenv("ILLUSTRATIONS_PNG_METADATA", "true")
    settings = load_settings()
    assert settings.lease_s == 12.5
    assert settings.heartbeat_s == 2.0
    assert settings.model_profile == "sdxl"
    assert settings.png_metadata is True
    assert not settings.is_sqlite


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ILLUSTRATIONS_LEASE_S", "soon"),
        ("ILLUSTRATIONS_MODEL_PROFILE", "huge"),
        ("ILLUSTRATIONS_API_WORKERS", "0"),
        ("ILLUSTRATIONS_PNG_METADATA", "maybe"),
        ("ILLUSTRATIONS_FLOWER_PORT", "70000"),
        ("ILLUSTRATIONS_COMPILE_SIZES", "1024"),
        ("ILLUSTRATIONS_COMPILE_SIZES", "1020x1024"),
        ("ILLUSTRATIONS_COMPILE_SIZES", ",".join(f"{64 + 8 * i}x64" for i in range(9))),  # dynamo's limit is 8
        ("ILLUSTRATIONS_LORA_TARGET_RANK", "0"),
    ],
)
def test_a_malformed_value_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch, variable: str,
                                                     value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=variable):
        load_settings()


def test_compile_sizes_are_parsed_in_order_without_repeats() -> None:
    from shared.settings import parse_sizes

    assert parse_sizes("1024x1024, 1152x896,1024x1024") == ((1024, 1024), (1152, 896))
    assert len(parse_sizes(load_settings().compile_sizes)) == 7  # SDXL's usual buckets


def test_inconsistent_timers_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ILLUSTRATIONS_LEASE_S", "5")
    monkeypatch.setenv("ILLUSTRATIONS_HEARTBEAT_S", "10")
    with pytest.raises(SettingsError, match="ILLUSTRATIONS_HEARTBEAT_S"):
        load_settings()
    monkeypatch.setenv("ILLUSTRATIONS_HEARTBEAT_S", "1")
    monkeypatch.setenv("ILLUSTRATIONS_VISIBILITY_TIMEOUT_S", "60")
    with pytest.raises(SettingsError, match="ILLUSTRATIONS_VISIBILITY_TIMEOUT_S"):
        load_settings()


def test_settings_are_read_once(monkeypatch: pytest.MonkeyPatch) -> None:
    get_settings.cache_clear()
    try:
        first = get_settings()
        monkeypatch.setenv("ILLUSTRATIONS_LEASE_S", "99")
        assert get_settings() is first
        assert first.lease_s != 99
    finally:
        get_settings.cache_clear()


def test_cli_reports_a_malformed_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from cli import main

    get_settings.cache_clear()
    monkeypatch.setenv("ILLUSTRATIONS_RELAY_INTERVAL_S", "-1")
    try:
        result = CliRunner().invoke(main, ["status"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code != 0
    assert "ILLUSTRATIONS_RELAY_INTERVAL_S" in result.output
