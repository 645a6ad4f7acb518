"""`illustrations models sync s3://...`: weights copied from a bucket onto the node once, against a real S3 server."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.model_sync import sync_from_s3
from shared.settings import Settings, get_settings
from shared.storage.s3 import S3Storage
from tests.s3server import S3Server


def files_under(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def test_sync_copies_a_model_tree_once(s3_server: S3Server, tiny_model_dir: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"models-{uuid.uuid4().hex[:6]}/tiny"
    bucket = S3Storage(s3_server.bucket, prefix, endpoint_url=s3_server.endpoint, **s3_server.credentials)
    source = files_under(tiny_model_dir)
    for key, data in source.items():
        bucket.put(key, data, "application/octet-stream")
    settings = Settings(s3_endpoint_url=s3_server.endpoint, s3_access_key_id=s3_server.access_key,
                        s3_secret_access_key=s3_server.secret_key)
    uri = f"s3://{s3_server.bucket}/{prefix}"

    target = tmp_path / "models" / "tiny"
    assert sync_from_s3(settings, uri, target) == (len(source), 0)
    assert files_under(target) == source
    assert all(oct(path.stat().st_mode)[-3:] == "644" for path in target.rglob("*") if path.is_file())
    assert sync_from_s3(settings, uri, target) == (0, len(source))  # second start: nothing downloaded

    (target / "MODEL_REVISION").write_text("stale")  # a changed file (other size) is fetched again
    assert sync_from_s3(settings, uri, target) == (1, len(source) - 1)
    assert files_under(target) == source

    # The CLI the Kubernetes init container runs, into the profile folder of the settings.
    for name, value in {"S3_ENDPOINT_URL": s3_server.endpoint, "S3_ACCESS_KEY_ID": s3_server.access_key,
                        "S3_SECRET_ACCESS_KEY": s3_server.secret_key, "MODEL_DIR": str(tmp_path / "cli")}.items():
        monkeypatch.setenv(f"ILLUSTRATIONS_{name}", value)
    get_settings.cache_clear()
    try:
        from cli import main

        result = CliRunner().invoke(main, ["models", "sync", uri])
        check = CliRunner().invoke(main, ["models", "check"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert f"{len(source)} file(s) downloaded" in result.output
    assert check.exit_code == 0
    assert "complete" in check.output


def test_sync_refuses_other_uris(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="s3://"):
        sync_from_s3(Settings(), "/some/folder", tmp_path)
