"""Webhooks over the API (Flask's client, real PostgreSQL and Redis): `webhook_url` accepted on illustrations,
batches and styles with the literal address check (a private address is a 422 naming it), the delivery log
(`GET /v1/webhooks/deliveries`) and the re-send (`POST /v1/webhooks/deliveries/{id}/retry`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from shared import jobs
from shared.db import Database
from shared.models import Batch, Job, StyleVersion, WebhookEvent
from shared.settings import Settings
from shared.webhooks import events
from tests.helpers import VALID, make_key, new_client, style_form, submit

HOOK = "https://autobio.example/hooks/illustrations"


def problems(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.json
    return {e["field"]: e["message"] for e in response.json["errors"]}


def test_webhook_urls_are_accepted_and_a_blocked_address_is_a_named_422(
    client: FlaskClient, auth: dict[str, str], db: Database
) -> None:
    job = submit(client, auth, webhook_url=HOOK)
    with db.begin() as session:
        assert session.get_one(Job, job["id"]).webhook_url == HOOK
    for url, kind in (("http://10.0.0.8/hook", "private"), ("http://127.0.0.1:8080/hook", "loopback"),
                      ("http://[::ffff:169.254.169.254]/x", "metadata"), ("http://100.64.1.1/x", "cgnat")):
        found = problems(client.post("/v1/illustrations", json={**VALID, "webhook_url": url}, headers=auth))
        assert kind in found["webhook_url"], (url, found)
    assert "webhook_url" in problems(client.post("/v1/illustrations", json={**VALID, "webhook_url": "ftp://x/y"},
                                                 headers=auth))
    found = problems(client.post("/v1/batches", json={"requests": [{**VALID, "webhook_url": "http://10.1.1.1/"}]},
                                 headers=auth))
    assert "requests.0.webhook_url" in found
    batch = client.post("/v1/batches", json={"requests": [VALID], "webhook_url": HOOK}, headers=auth).json
    with db.begin() as session:
        assert session.get_one(Batch, batch["id"]).webhook_url == HOOK  # type: ignore[index]


def test_a_host_that_resolves_to_a_blocked_address_is_refused_at_submit_naming_the_allowlist(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    """`localhost` is a name: the literal check cannot see it; resolved at submit, it is refused there, not at every
    delivery. The message teaches the way out (the allowlist setting) and the code is stable."""
    for url in ("http://localhost:9999/hook", "http://10.0.0.8/hook"):
        response = client.post("/v1/illustrations", json={**VALID, "webhook_url": url}, headers=auth)
        assert response.status_code == 422, response.json
        (error,) = response.json["errors"]  # type: ignore[index]
        assert error["field"] == "webhook_url"
        assert error["code"] == "blocked_url"
        assert "ILLUSTRATIONS_FETCH_ALLOWLIST" in error["message"]
    batch = client.post("/v1/batches", json={"requests": [VALID], "webhook_url": "http://localhost/h"}, headers=auth)
    assert [(e["field"], e["code"]) for e in batch.json["errors"]] == [("webhook_url", "blocked_url")]  # type: ignore[index]
    malformed = client.post("/v1/illustrations", json={**VALID, "webhook_url": "http://user:pw@hooks.example/"},
                            headers=auth)
    assert [(e["field"], e["code"]) for e in malformed.json["errors"]] == [  # type: ignore[index]
        ("webhook_url", "invalid_url")]
    submit(client, auth, webhook_url="https://does-not-resolve.invalid/hook")  # resolved again at each delivery


def test_an_allowlisted_receiver_may_be_private(settings: Settings) -> None:
    from api import create_app

    app = create_app(settings.model_copy(update={"fetch_allowlist": ["127.0.0.1", "localhost"]}))
    try:
        key = make_key(app.extensions["illustrations"].db)
        submit(app.test_client(), {"Authorization": f"Bearer {key}"}, webhook_url="http://127.0.0.1:9999/h")
        submit(app.test_client(), {"Authorization": f"Bearer {key}"}, webhook_url="http://localhost:9999/h")
    finally:
        app.extensions["illustrations"].waiter.close()
        app.extensions["illustrations"].db.engine.dispose()


def test_a_style_training_takes_a_webhook_url(client: FlaskClient, db: Database) -> None:
    auth = {"Authorization": f"Bearer {make_key(db, scopes=('styles',))}"}
    response = client.post("/v1/styles", headers=auth, data=style_form(webhook_url=HOOK))
    assert response.status_code == 202, response.json
    with db.begin() as session:
        row = session.query(StyleVersion).filter_by(job_id=response.json["job_id"]).one()  # type: ignore[index]
        assert row.webhook_url == HOOK


def canceled_with_hook(client: FlaskClient, auth: dict[str, str], url: str = HOOK) -> tuple[str, str]:
    job = submit(client, auth, webhook_url=url)
    assert client.post(f"/v1/illustrations/{job['id']}/cancel", headers=auth).status_code == 200
    return job["id"], "msg_" + job["id"].replace("-", "")


def test_the_delivery_log_lists_each_event_with_its_attempts(client: FlaskClient, auth: dict[str, str],
                                                             db: Database) -> None:
    job_id, event_id = canceled_with_hook(client, auth)
    with db.begin() as session:
        events.attempted(session, event_id, 1, events.Answer(500, 12.5, error="the receiver answered 500"), 0.0)
        events.attempted(session, event_id, 2, events.Answer(204, 8.0), None)
    response = client.get(f"/v1/webhooks/deliveries?job_id={job_id}", headers=auth)
    assert response.status_code == 200
    (item,) = response.json["items"]  # type: ignore[index]
    assert item["id"] == event_id
    assert item["type"] == "illustration.canceled"
    assert item["url"] == HOOK
    assert item["status"] == "delivered"
    assert item["job_id"] == job_id
    assert [(a["attempt"], a["status_code"], a["latency_ms"], a["error"]) for a in item["attempts"]] == [
        (1, 500, 12.5, "the receiver answered 500"), (2, 204, 8.0, None)]
    assert item["delivered_at"] is not None
    assert item["next_attempt_at"] is None

    # Paging through the whole client; another client sees nothing of it.
    canceled_with_hook(client, auth)
    first = client.get("/v1/webhooks/deliveries?limit=1", headers=auth).json
    assert len(first["items"]) == 1
    assert first["next_cursor"]  # type: ignore[index]
    second = client.get(f"/v1/webhooks/deliveries?limit=1&cursor={first['next_cursor']}", headers=auth).json  # type: ignore[index]
    assert second["items"][0]["id"] != first["items"][0]["id"]  # type: ignore[index]
    other = {"Authorization": f"Bearer {make_key(db)}"}
    assert client.get(f"/v1/webhooks/deliveries?job_id={job_id}", headers=other).json == {"items": [],
                                                                                         "next_cursor": None}
    for query, field in (("job_id=a&style=b", "style"), ("limit=0", "limit"), ("limit=101", "limit"),
                         ("colour=red", "colour"), ("cursor=nope", "cursor")):
        response = client.get(f"/v1/webhooks/deliveries?{query}", headers=auth)
        assert response.status_code == 422, query
        fields = [e["field"] for e in response.json["errors"]]  # type: ignore[index]
        assert field in fields, (query, fields)
    assert client.get("/v1/webhooks/deliveries?style=ink", headers=auth).status_code == 403  # needs `styles`
    styles_key = {"Authorization": f"Bearer {make_key(db, scopes=('generate', 'styles'))}"}
    assert client.get("/v1/webhooks/deliveries?style=nope", headers=styles_key).status_code == 404
    assert client.get("/v1/webhooks/deliveries").status_code == 401


def test_a_resend_keeps_the_id_and_queues_it_now(client: FlaskClient, auth: dict[str, str], db: Database,
                                                 settings: Settings) -> None:
    broker = redis.Redis.from_url(settings.broker_url)
    broker.delete("illustrations.webhooks")
    _, event_id = canceled_with_hook(client, auth)
    with db.begin() as session:
        events.attempted(session, event_id, 1, events.Answer(410, 3.0, error="the receiver answered 410"), 5.0)
        assert session.get_one(WebhookEvent, event_id).state == "stopped"
    response = client.post(f"/v1/webhooks/deliveries/{event_id}/retry", headers=auth)
    assert response.status_code == 202, response.json
    assert response.json["id"] == event_id  # type: ignore[index]
    assert response.json["status"] == "pending"  # type: ignore[index]
    (raw,) = broker.lrange("illustrations.webhooks", 0, -1)
    assert json.loads(raw)["headers"]["argsrepr"] == repr([event_id])
    with db.begin() as session:
        row = session.get_one(WebhookEvent, event_id)
        assert row.lease_until is not None
        assert row.attempts == 1  # claimed for that message; beat leaves it
    other = {"Authorization": f"Bearer {make_key(db)}"}
    assert client.post(f"/v1/webhooks/deliveries/{event_id}/retry", headers=other).status_code == 404
    for unknown in ("msg_nope", "x" * 300, "msg_%00"):
        assert client.post(f"/v1/webhooks/deliveries/{unknown}/retry", headers=auth).status_code == 404


@pytest.fixture
def style_event(db: Database) -> tuple[str, dict[str, str]]:
    """A style version's event of a client with a generate-only and a styles key."""
    from shared import training

    client_id = new_client(db, webhook_url=HOOK)
    params = {"rank": 4, "alpha": 4, "steps": 2, "learning_rate": 1e-4, "resolution": 64, "seed": 1,
              "batch_size": 1}
    with db.begin() as session:
        row = training.new_training(session, client_id, "ink", params, base_profile="tiny",
                                    queue="illustrations.training")
        job_id = str(row.job_id)
    with db.begin() as session:
        held = training.claim(session, job_id, "w", 60)
        assert isinstance(held, training.TrainingClaim)
        assert training.failed(session, held, jobs.ErrorCode.OUT_OF_MEMORY, "too big")
    from api.keys import create_key
    from shared.models import Client

    with db.begin() as session:
        name = session.get_one(Client, client_id).name
        _, key = create_key(session, name, ("generate", "styles"))
    return "msg_" + job_id.replace("-", ""), {"Authorization": f"Bearer {key}"}


def test_a_styles_deliveries_need_the_styles_scope(client: FlaskClient, db: Database,
                                                  style_event: tuple[str, dict[str, str]]) -> None:
    event_id, auth = style_event
    (item,) = client.get("/v1/webhooks/deliveries?style=ink", headers=auth).json["items"]  # type: ignore[index]
    assert item["id"] == event_id
    assert item["type"] == "style.failed"
    assert item["style"] == "ink"
    assert item["style_version"] == 1
    generate_only = {"Authorization": f"Bearer {make_key(db, client_name=client_name(db, event_id))}"}
    assert client.post(f"/v1/webhooks/deliveries/{event_id}/retry", headers=generate_only).status_code == 403
    assert client.post(f"/v1/webhooks/deliveries/{event_id}/retry", headers=auth).status_code == 202


def client_name(db: Database, event_id: str) -> str:
    from shared.models import Client

    with db.begin() as session:
        return session.get_one(Client, session.get_one(WebhookEvent, event_id).client_id).name


def test_the_backlog_gauge_counts_due_undelivered_events(client: FlaskClient, auth: dict[str, str],
                                                         db: Database) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    ops = {"Authorization": f"Bearer {make_key(db, scopes=('ops',))}"}

    def backlog() -> float:
        text = client.get("/metrics", headers=ops).get_data(as_text=True)
        (family,) = [f for f in text_string_to_metric_families(text) if f.name == "illustrations_webhook_backlog"]
        return float(family.samples[0].value)

    before = backlog()
    _, event_id = canceled_with_hook(client, auth)
    assert backlog() == before + 1
    with db.begin() as session:
        events.attempted(session, event_id, 1, events.Answer(200, 1.0), None)
    assert backlog() == before
