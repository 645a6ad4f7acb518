"""Settings: embedded defaults, typed parsing, and malformed values named at start."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shared.settings import SettingsError, get_settings, load_settings
from tests.system.procs import clean_env, cli


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


@pytest.mark.parametrize(("value", "expected"), [
    ("127.0.0.1", ["127.0.0.1"]),
    (" 127.0.0.1, 10.0.0.0/8 ,Hooks.Internal,", ["127.0.0.1", "10.0.0.0/8", "hooks.internal"]),
    ('["127.0.0.1", "::1"]', ["127.0.0.1", "::1"]),
    ("", []),
])
def test_the_fetch_allowlist_is_comma_separated_or_json(monkeypatch: pytest.MonkeyPatch, value: str,
                                                        expected: list[str]) -> None:
    monkeypatch.setenv("ILLUSTRATIONS_FETCH_ALLOWLIST", value)
    assert load_settings().fetch_allowlist == expected


@pytest.mark.parametrize("value", ['["127.0.0.1"', "http://127.0.0.1:9999/hook", "10.0.0.0/33", "a host"])
def test_a_bad_allowlist_fails_naming_the_variable(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("ILLUSTRATIONS_FETCH_ALLOWLIST", value)
    with pytest.raises(SettingsError, match="ILLUSTRATIONS_FETCH_ALLOWLIST"):
        load_settings()


@pytest.mark.parametrize(("variable", "value"), [
    ("ILLUSTRATIONS_FETCH_ALLOWLIST", "127.0.0.1/40"),
    ("ILLUSTRATIONS_WEBHOOK_SECRET_KEYS", "not-json"),  # a JSON list setting that does not decode
])
def test_a_process_with_a_bad_list_stops_at_start_with_one_line(tmp_path: Path, variable: str, value: str) -> None:
    """`illustrations api` (the command ops run) exits at once with one line naming the variable: no traceback."""
    env = {**clean_env(VAR_DIR=str(tmp_path / "var")), variable: value}
    result = subprocess.run(cli("api", "--bind", "127.0.0.1:0"), env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert variable in line and line.startswith("Error: invalid configuration")


def test_the_public_base_url_is_checked_and_the_embedded_mode_has_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ILLUSTRATIONS_API_BIND", "0.0.0.0:8123")
    assert load_settings().effective_public_base_url == "http://127.0.0.1:8123"  # the embedded mode: the API's own
    monkeypatch.setenv("ILLUSTRATIONS_PUBLIC_BASE_URL", "https://illustrations.example/")
    assert load_settings().effective_public_base_url == "https://illustrations.example"
    monkeypatch.delenv("ILLUSTRATIONS_PUBLIC_BASE_URL")
    monkeypatch.setenv("ILLUSTRATIONS_BROKER_URL", "redis://redis:6379/0")
    assert load_settings().effective_public_base_url is None  # elsewhere it must be set (webhook workers check)
    monkeypatch.setenv("ILLUSTRATIONS_PUBLIC_BASE_URL", "illustrations.example")
    with pytest.raises(SettingsError, match="ILLUSTRATIONS_PUBLIC_BASE_URL"):
        load_settings()


def test_a_webhooks_worker_refuses_to_start_without_a_public_base_url(tmp_path: Path) -> None:
    env = clean_env(VAR_DIR=str(tmp_path / "var"), BROKER_URL="redis://127.0.0.1:1/0")
    result = subprocess.run(cli("worker", "--queues", "illustrations.maintenance,illustrations.webhooks", "--pool",
                                "threads"), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "ILLUSTRATIONS_PUBLIC_BASE_URL" in result.stderr
    assert "Traceback" not in result.stderr
