"""The `metrics` scope: read-only and operator-wide. It reads `/metrics` and `/v1/metrics/quality` (what Prometheus or
a dashboard holds) and nothing else: not the `/ops` gallery, its images, nor any client's resources. An `ops` key
reads everything a `metrics` key reads, and the gallery."""

from __future__ import annotations

import base64

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient

from shared.db import Database
from shared.settings import Settings
from tests.conftest import make_key


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"ops:{key}".encode()).decode()}


def test_a_metrics_key_reads_the_metrics_and_nothing_else(client: FlaskClient, db: Database) -> None:
    key = make_key(db, scopes=("metrics",))
    bearer = {"Authorization": f"Bearer {key}"}
    assert client.get("/metrics", headers=bearer).status_code == 200
    assert client.get("/v1/metrics/quality?range=7d", headers=bearer).status_code == 200
    assert client.get("/ops", headers=basic(key)).status_code == 403
    assert client.get("/ops/images/some-job/0", headers=basic(key)).status_code == 403
    assert client.get("/v1/illustrations", headers=bearer).status_code == 403
    assert client.get("/v1/styles", headers=bearer).status_code == 403
    assert client.get("/v1/webhooks/deliveries", headers=bearer).status_code == 403
    assert client.delete("/v1/users/u-1", headers=bearer).status_code == 403


def test_an_ops_key_reads_the_metrics_and_the_gallery(client: FlaskClient, db: Database) -> None:
    key = make_key(db, scopes=("ops",))
    bearer = {"Authorization": f"Bearer {key}"}
    assert client.get("/metrics", headers=bearer).status_code == 200
    assert client.get("/v1/metrics/quality?range=7d", headers=bearer).status_code == 200
    assert client.get("/ops", headers=basic(key)).status_code == 200


def test_a_generate_key_reads_no_metrics(client: FlaskClient, auth: dict[str, str]) -> None:
    assert client.get("/metrics", headers=auth).status_code == 403
    assert client.get("/v1/metrics/quality?range=7d", headers=auth).status_code == 403


def test_the_cli_creates_a_metrics_key(settings: Settings, client: FlaskClient,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import main
    from shared.settings import get_settings

    monkeypatch.setenv("ILLUSTRATIONS_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    try:
        created = CliRunner().invoke(main, ["keys", "create", "--name", "prometheus", "--scope", "metrics"])
        assert created.exit_code == 0, created.output
    finally:
        get_settings.cache_clear()
    key = created.stdout.strip().splitlines()[-1]
    assert client.get("/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/ops", headers=basic(key)).status_code == 403
