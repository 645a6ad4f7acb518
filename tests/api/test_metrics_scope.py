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
from tests.helpers import make_key


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"ops:{key}".encode()).decode()}


@pytest.mark.parametrize("scope", ["metrics", "ops"])
def test_metrics_and_ops_keys_read_the_metrics(client: FlaskClient, db: Database, scope: str) -> None:
    bearer = {"Authorization": f"Bearer {make_key(db, scopes=(scope,))}"}
    assert client.get("/metrics", headers=bearer).status_code == 200
    assert client.get("/v1/metrics/quality?range=7d", headers=bearer).status_code == 200


def test_a_metrics_key_opens_nothing_else(client: FlaskClient, db: Database) -> None:
    key = make_key(db, scopes=("metrics",))
    bearer = {"Authorization": f"Bearer {key}"}
    assert client.get("/ops", headers=basic(key)).status_code == 403
    assert client.get("/ops/images/some-job/0", headers=basic(key)).status_code == 403
    for path in ("/v1/illustrations", "/v1/styles", "/v1/webhooks/deliveries"):
        assert client.get(path, headers=bearer).status_code == 403, path
    assert client.delete("/v1/users/u-1", headers=bearer).status_code == 403


def test_an_ops_key_opens_the_gallery(client: FlaskClient, db: Database) -> None:
    assert client.get("/ops", headers=basic(make_key(db, scopes=("ops",)))).status_code == 200


def test_a_generate_key_reads_no_metrics(client: FlaskClient, auth: dict[str, str]) -> None:
    assert client.get("/metrics", headers=auth).status_code == 403
    assert client.get("/v1/metrics/quality?range=7d", headers=auth).status_code == 403


def test_the_cli_creates_a_metrics_key(settings: Settings, client: FlaskClient) -> None:
    from cli import main
    from shared.settings import get_settings

    get_settings.cache_clear()
    created = CliRunner().invoke(main, ["keys", "create", "--name", "prometheus", "--scope", "metrics"],
                                 env={"ILLUSTRATIONS_DATABASE_URL": settings.database_url})
    get_settings.cache_clear()
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert client.get("/metrics", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/ops", headers=basic(key)).status_code == 403
