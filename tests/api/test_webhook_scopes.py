"""Who sees which webhook deliveries (contract: `styles` sees the deliveries of styles, `generate` those of jobs).

One client with a job event (`illustration.canceled`) and a style event (`style.failed`), and three of its keys:
`generate` only, `styles` only, and both. The unfiltered list shows each key what its scopes cover; a filter or a
re-send the key's scopes do not cover is a 403.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from flask.testing import FlaskClient

from api.keys import create_key
from shared import training
from shared.db import Database
from shared.errors import ErrorCode

HOOK = "https://autobio.example/hooks/illustrations"


@dataclass(frozen=True)
class Events:
    job_event: str
    job_id: str
    style_event: str
    keys: dict[str, dict[str, str]]  # "generate", "styles", "both" -> Authorization header


@pytest.fixture
def events(client: FlaskClient, db: Database) -> Events:
    name = f"hooks-{uuid.uuid4().hex[:8]}"
    keys = {}
    with db.begin() as session:
        for label, scopes in (("generate", ("generate",)), ("styles", ("styles",)),
                              ("both", ("generate", "styles"))):
            row, plaintext = create_key(session, name, scopes)
            keys[label] = {"Authorization": f"Bearer {plaintext}"}
        client_id = row.client_id
    job: Any = client.post("/v1/illustrations", headers=keys["generate"], json={
        "user_id": "u-1", "prompt": "a lighthouse", "params": {"width": 64, "height": 64}, "webhook_url": HOOK}).json
    assert client.post(f"/v1/illustrations/{job['id']}/cancel", headers=keys["generate"]).status_code == 200
    params = {"rank": 4, "alpha": 4, "steps": 2, "learning_rate": 1e-4, "resolution": 64, "seed": 1, "batch_size": 1}
    with db.begin() as session:
        version = training.new_training(session, client_id, "ink", params, base_profile="tiny",
                                        queue="illustrations.training", webhook_url=HOOK)
        style_job = str(version.job_id)
    with db.begin() as session:
        held = training.claim(session, style_job, "w", 60)
        assert isinstance(held, training.TrainingClaim)
        assert training.failed(session, held, ErrorCode.OUT_OF_MEMORY, "too big")
    return Events(job_event="msg_" + job["id"].replace("-", ""), job_id=job["id"],
                  style_event="msg_" + style_job.replace("-", ""), keys=keys)


def listed(client: FlaskClient, headers: dict[str, str], query: str = "") -> list[str]:
    response = client.get(f"/v1/webhooks/deliveries{query}", headers=headers)
    assert response.status_code == 200, response.json
    return sorted(item["id"] for item in response.json["items"])  # type: ignore[index]


def test_a_generate_key_lists_job_deliveries_only(client: FlaskClient, events: Events) -> None:
    assert listed(client, events.keys["generate"]) == [events.job_event]


def test_a_styles_key_lists_style_deliveries_only(client: FlaskClient, events: Events) -> None:
    assert listed(client, events.keys["styles"]) == [events.style_event]
    assert listed(client, events.keys["styles"], "?style=ink") == [events.style_event]


def test_a_key_with_both_scopes_lists_both(client: FlaskClient, events: Events) -> None:
    assert listed(client, events.keys["both"]) == sorted([events.job_event, events.style_event])


def test_a_filter_outside_the_keys_scopes_is_403(client: FlaskClient, events: Events) -> None:
    assert client.get("/v1/webhooks/deliveries?style=ink", headers=events.keys["generate"]).status_code == 403
    assert client.get(f"/v1/webhooks/deliveries?job_id={events.job_id}",
                      headers=events.keys["styles"]).status_code == 403


def test_a_resend_needs_the_scope_of_its_event(client: FlaskClient, events: Events) -> None:
    retry = "/v1/webhooks/deliveries/{}/retry"
    assert client.post(retry.format(events.style_event), headers=events.keys["generate"]).status_code == 403
    assert client.post(retry.format(events.job_event), headers=events.keys["styles"]).status_code == 403
    assert client.post(retry.format(events.style_event), headers=events.keys["styles"]).status_code == 202
    assert client.post(retry.format(events.job_event), headers=events.keys["generate"]).status_code == 202


def test_a_key_without_either_scope_sees_no_deliveries(client: FlaskClient, db: Database) -> None:
    with db.begin() as session:
        _, admin_only = create_key(session, f"admins-{uuid.uuid4().hex[:8]}", ("admin",))
    assert client.get("/v1/webhooks/deliveries",
                      headers={"Authorization": f"Bearer {admin_only}"}).status_code == 403
