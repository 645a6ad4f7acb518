"""The API through Flask's test client against real PostgreSQL and Redis (no worker: jobs stay queued)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import select

from shared import jobs
from shared.db import Database
from shared.models import Client, Job
from shared.settings import Settings
from tests.helpers import VALID, count_jobs, lora, make_key, png, submit, upload


def test_submit_commits_publishes_the_id_and_answers_202(client: FlaskClient, auth: dict[str, str], db: Database,
                                                         settings: Settings) -> None:
    queue = redis.Redis.from_url(settings.broker_url)
    queue.delete("illustrations.interactive")
    response = client.post("/v1/illustrations", json=VALID, headers=auth)
    assert response.status_code == 202
    body = response.json
    assert body is not None
    assert response.headers["Location"] == f"/v1/illustrations/{body['id']}"
    assert body["status"] == "queued"
    assert body["user_id"] == "u-1"
    assert body["attempts"] == 0
    assert body["links"] == {"self": f"http://localhost/v1/illustrations/{body['id']}"}  # absolute, as images
    assert isinstance(body["seed"], int)
    assert body["prompt_used"].startswith(VALID["prompt"])
    # The message carries the job id only (nothing personal travels through Redis or shows in Flower).
    messages = queue.lrange("illustrations.interactive", 0, -1)
    assert len(messages) == 1
    message = json.loads(messages[0])
    assert json.loads(__import__("base64").b64decode(message["body"]))[0] == [body["id"]]
    assert VALID["prompt"] not in messages[0].decode()
    with db.begin() as session:
        job = session.get_one(Job, body["id"])
        # The outbox mark is made once the answer is sent (the WSGI server closes the response; here, close()).
        assert job.published_at is None
        assert job.request["prompt"] == VALID["prompt"]
    response.close()
    with db.begin() as session:
        assert session.get_one(Job, body["id"]).published_at is not None


def test_get_returns_the_job_and_its_queue_position(client: FlaskClient, auth: dict[str, str]) -> None:
    first = client.post("/v1/illustrations", json=VALID, headers=auth).json
    assert first is not None
    response = client.get(f"/v1/illustrations/{first['id']}", headers=auth)
    assert response.status_code == 200
    body = response.json
    assert body is not None
    assert body["id"] == first["id"]
    assert isinstance(body["queue_position"], int)
    assert body["queue_position"] >= 0
    for field in ("created_at", "started_at", "finished_at", "progress", "images", "error", "timings", "model",
                  "cached", "metadata", "warnings"):
        assert field in body
    assert body["created_at"].endswith("Z")


def test_the_202_of_a_create_carries_the_queue_position(client: FlaskClient, auth: dict[str, str]) -> None:
    """Computed at submit (not null, as a GET a moment later would say it): each new job waits behind the last."""
    first = submit(client, auth, prompt="a red kite over the dunes")
    second = submit(client, auth, prompt="a blue kite over the dunes")
    assert isinstance(first["queue_position"], int)
    assert second["queue_position"] == first["queue_position"] + 1
    assert client.get(f"/v1/illustrations/{second['id']}", headers=auth).json["queue_position"] == (  # type: ignore[index]
        second["queue_position"])
    batch = submit(client, auth, prompt="a green kite", priority="batch")
    assert batch["queue_position"] >= second["queue_position"] + 1  # interactive work goes first


def test_seed_is_kept_when_given(client: FlaskClient, auth: dict[str, str]) -> None:
    body = client.post("/v1/illustrations", json={**VALID, "params": {**VALID["params"], "seed": 4242}},
                       headers=auth).json
    assert body is not None
    assert body["seed"] == 4242


def test_batch_priority_goes_to_the_batch_queue(client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    body = client.post("/v1/illustrations", json={**VALID, "priority": "batch"}, headers=auth).json
    assert body is not None
    assert body["priority"] == "batch"
    with db.begin() as session:
        assert session.get_one(Job, body["id"]).queue == "illustrations.batch"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": "x"}, "user_id"),
        ({"user_id": "u-1"}, "prompt"),
        ({"user_id": "u-1", "prompt": ""}, "prompt"),
        ({"user_id": "u-1", "prompt": "   "}, "prompt"),
        ({"user_id": "u-1", "prompt": 42}, "prompt"),
        ({"user_id": 7, "prompt": "x"}, "user_id"),
        ({"user_id": "u 1", "prompt": "x"}, "user_id"),
        ({"user_id": "u-1", "prompt": "x" * 2001}, "prompt"),
        ({"user_id": "u-1", "prompt": "x", "negative_prompt": "n" * 1001}, "negative_prompt"),
        ({"user_id": "u-1", "prompt": "x", "params": {"width": 1000 + 4}}, "params.width"),
        ({"user_id": "u-1", "prompt": "x", "params": {"width": 4096}}, "params.width"),
        ({"user_id": "u-1", "prompt": "x", "params": {"height": "1024"}}, "params.height"),
        ({"user_id": "u-1", "prompt": "x", "params": {"steps": 0}}, "params.steps"),
        ({"user_id": "u-1", "prompt": "x", "params": {"steps": 101}}, "params.steps"),
        ({"user_id": "u-1", "prompt": "x", "params": {"guidance_scale": 31}}, "params.guidance_scale"),
        ({"user_id": "u-1", "prompt": "x", "params": {"num_images": 5}}, "params.num_images"),
        ({"user_id": "u-1", "prompt": "x", "params": {"seed": -1}}, "params.seed"),
        ({"user_id": "u-1", "prompt": "x", "params": {"seed": 2**32}}, "params.seed"),
        ({"user_id": "u-1", "prompt": "x", "params": {"sampler": "ddim"}}, "params.sampler"),
        ({"user_id": "u-1", "prompt": "x", "subjects": [{"subject_id": "a"}] * 5}, "subjects"),
        ({"user_id": "u-1", "prompt": "x", "subjects": [{}]}, "subjects.0"),
        ({"user_id": "u-1", "prompt": "x", "priority": "urgent"}, "priority"),
        ({"user_id": "u-1", "prompt": "x", "cancel_after": "2026-11-26T12:00:00"}, "cancel_after"),
        ({"user_id": "u-1", "prompt": "x", "metadata": {"k": "v" * 5000}}, "metadata"),
        ({"user_id": "u-1", "prompt": "x", "webhook_url": "ftp://example.com/x"}, "webhook_url"),
        ({"user_id": "u-1", "prompt": "x", "surprise": True}, "surprise"),
        ({"user_id": "u-1", "prompt": "x", "style": {"reference": {"subject_id": "a", "image_url": "https://x/y"}}},
         "style.reference"),
    ],
)
def test_invalid_requests_are_422_naming_the_field_and_write_nothing(
    client: FlaskClient, auth: dict[str, str], db: Database, body: dict[str, Any], field: str
) -> None:
    before = count_jobs(db)
    response = client.post("/v1/illustrations", json=body, headers=auth)
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    problem = response.json
    assert problem is not None
    assert problem["status"] == 422
    assert field in [error["field"] for error in problem["errors"]], problem
    assert count_jobs(db) == before
    # The problem never repeats what the user wrote.
    assert "x" * 50 not in response.get_data(as_text=True)


def test_malformed_json_is_400(client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    before = count_jobs(db)
    for raw in ("{not json", "[1, 2]", '"text"'):
        response = client.post("/v1/illustrations", data=raw, content_type="application/json", headers=auth)
        assert response.status_code == 400, raw
        assert response.mimetype == "application/problem+json"
    assert count_jobs(db) == before


def test_wrong_content_type_is_415_and_huge_body_413(client: FlaskClient, auth: dict[str, str]) -> None:
    response = client.post("/v1/illustrations", data="user_id=u", content_type="text/plain", headers=auth)
    assert response.status_code == 415
    assert response.mimetype == "application/problem+json"
    huge = json.dumps({**VALID, "prompt": "x" * (13 * 1024 * 1024)})
    response = client.post("/v1/illustrations", data=huge, content_type="application/json", headers=auth)
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"


def test_unknown_route_and_method_are_problems(client: FlaskClient, auth: dict[str, str]) -> None:
    assert client.get("/v1/nothing-here", headers=auth).mimetype == "application/problem+json"
    response = client.delete("/v1/illustrations", headers=auth)
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"


def test_unknown_subjects_and_styles_are_422(client: FlaskClient, auth: dict[str, str]) -> None:
    cases = [
        ({"subjects": [{"subject_id": str(uuid.uuid4())}]}, "subjects.0"),
        ({"subjects": [{"name": "nobody"}]}, "subjects.0"),
        ({"style": {"reference": {"subject_id": str(uuid.uuid4())}}}, "style.reference"),
        ({"params": {"style_lora": "autobio-watercolor"}}, "params.style_lora"),
    ]
    for extra, field in cases:
        response = client.post("/v1/illustrations", json={**VALID, **extra}, headers=auth)
        assert response.status_code == 422, extra
        assert field in [error["field"] for error in response.json["errors"]]  # type: ignore[index]


def test_subjects_resolve_by_id_and_name_to_the_stored_version(client: FlaskClient, auth: dict[str, str],
                                                               db: Database) -> None:
    subject = upload(client, auth)
    body = {**VALID, "subjects": [{"subject_id": subject["id"]}, {"name": "grandma"}],
            "style": {"reference": {"subject_id": subject["id"]}, "artistic_style": "watercolor"}}
    response = client.post("/v1/illustrations", json=body, headers=auth)
    assert response.status_code == 202, response.json
    with db.begin() as session:
        resolved = session.get_one(Job, response.json["id"]).request["resolved"]  # type: ignore[index]
    assert [ref["subject_id"] for ref in resolved["identity"]] == [subject["id"]] * 2
    assert resolved["identity"][0]["storage_key"] == f"subjects/{subject['id']}/v1.png"
    assert resolved["style"]["sha256"] == subject["sha256"]
    assert "watercolor style" in response.json["prompt_used"]  # type: ignore[index]


def test_another_users_subject_is_unknown(client: FlaskClient, auth: dict[str, str]) -> None:
    subject = upload(client, auth, user_id="someone-else")
    response = client.post("/v1/illustrations", json={**VALID, "subjects": [{"subject_id": subject["id"]}]},
                           headers=auth)
    assert response.status_code == 422


def test_nothing_of_another_client_is_visible(client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    mine = client.post("/v1/illustrations", json=VALID, headers=auth).json
    assert mine is not None
    other = {"Authorization": f"Bearer {make_key(db)}"}
    assert client.get(f"/v1/illustrations/{mine['id']}", headers=other).status_code == 404
    assert client.get(f"/v1/illustrations/{mine['id']}/images/0", headers=other).status_code == 404
    assert client.get(f"/v1/illustrations/{mine['id']}?user_id=u-2", headers=auth).status_code == 404
    assert client.get(f"/v1/illustrations/{mine['id']}?user_id=u-1", headers=auth).status_code == 200
    assert client.get(f"/v1/illustrations/{uuid.uuid4()}", headers=auth).status_code == 404


def test_images_of_a_finished_job_stream_from_the_local_store(client: FlaskClient, auth: dict[str, str],
                                                              db: Database, app: Any) -> None:
    body = client.post("/v1/illustrations", json=VALID, headers=auth).json
    assert body is not None
    assert client.get(f"/v1/illustrations/{body['id']}/images/0", headers=auth).status_code == 404
    data = png((64, 64), "blue")
    storage = app.extensions["illustrations"].storage
    storage.put(f"jobs/{body['id']}/1/0.png", data, "image/png")
    with db.begin() as session:
        claim = jobs.started(session, body["id"], "test-worker", 60)
        assert isinstance(claim, jobs.Claim)
        jobs.succeeded(session, claim, [jobs.StoredImage(0, f"jobs/{body['id']}/1/0.png", "image/png", 64, 64,
                                                         "ab" * 32, len(data))])
    job = client.get(f"/v1/illustrations/{body['id']}", headers=auth).json
    assert job is not None
    assert job["status"] == "succeeded"
    assert job["images"][0]["url"].endswith(f"/v1/illustrations/{body['id']}/images/0")
    with client.get(f"/v1/illustrations/{body['id']}/images/0", headers=auth) as response:
        assert response.status_code == 200
        assert response.mimetype == "image/png"
        assert response.data == data
    assert client.get(f"/v1/illustrations/{body['id']}/images/1", headers=auth).status_code == 404


def test_submit_while_the_broker_is_down_is_accepted_and_left_for_the_relay(
    settings: Settings, db: Database, tmp_path: Any
) -> None:
    from api import create_app

    dead = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    app = create_app(dead)
    client = app.test_client()
    auth = {"Authorization": f"Bearer {make_key(db)}"}
    response = client.post("/v1/illustrations", json=VALID, headers=auth)
    assert response.status_code == 202
    with db.begin() as session:
        assert session.get_one(Job, response.json["id"]).published_at is None  # type: ignore[index]
        assert response.json["id"] in [row[0] for row in jobs.unpublished(session, 0, limit=100_000)]  # type: ignore[index]
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json == {"database": "ok", "broker": "down"}
    app.extensions["illustrations"].db.engine.dispose()


def test_style_lora_names_a_ready_style_of_this_client(client: FlaskClient, db: Database, settings: Settings,
                                                        tmp_path: Path) -> None:
    from shared import styles as registry
    from shared.storage import open_storage

    name = f"styled-{uuid.uuid4().hex[:8]}"
    headers = {"Authorization": f"Bearer {make_key(db, name)}"}
    with db.begin() as session:
        client_id = session.execute(select(Client.id).where(Client.name == name)).scalar_one()
        registry.import_version(session, open_storage(settings), client_id, "watercolor",
                                lora(tmp_path / "w.safetensors"), "tiny")
    accepted = {"watercolor": {"name": "watercolor", "version": None},
                "watercolor@1": {"name": "watercolor", "version": 1}}
    for ref, resolved in accepted.items():
        response = client.post("/v1/illustrations", json={**VALID, "params": {"style_lora": ref}}, headers=headers)
        assert response.status_code == 202, response.json
        with db.begin() as session:
            job = session.get_one(Job, response.json["id"])  # type: ignore[index]
            assert job.request["resolved"]["style_lora"] == resolved
    refused = {"watercolor@2": "unknown style", "oil": "unknown style", "water color": "a style name",
               "watercolor@x": "positive integer"}
    for ref, message in refused.items():
        response = client.post("/v1/illustrations", json={**VALID, "params": {"style_lora": ref}}, headers=headers)
        assert response.status_code == 422, ref
        errors = response.json["errors"]  # type: ignore[index]
        assert errors[0]["field"] == "params.style_lora"
        assert message in errors[0]["message"]
    other = {"Authorization": f"Bearer {make_key(db)}"}  # another client: the style is not theirs
    response = client.post("/v1/illustrations", json={**VALID, "params": {"style_lora": "watercolor"}}, headers=other)
    assert response.status_code == 422
