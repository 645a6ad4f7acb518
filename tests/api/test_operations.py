"""Operations through the API: feedback, A/B variants at submit, the quality numbers, /metrics and the /ops page
(auth and rendering; the browser test is tests/system/test_operations.py)."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from shared import jobs
from shared.db import Database
from shared.experiments import assign
from shared.models import Client, Feedback, Job
from tests.helpers import make_key, submit

PICNIC = {"user_id": "u-ops", "prompt": "a picnic by the lake", "params": {"width": 64, "height": 64, "steps": 2}}


def finish(db: Database, app: Flask, job_id: str, status: str = "succeeded", variant: str = "a") -> None:
    """Run the job's lifecycle by hand: claim, then succeed with an image (or fail with a code)."""
    with db.begin() as session:
        claim = jobs.started(session, job_id, "test-worker", 60)
        assert isinstance(claim, jobs.Claim)
        model = {"profile": "tiny", "variant": variant}
        if status == "succeeded":
            app.extensions["illustrations"].storage.put(f"jobs/{job_id}/1/0.png", b"\x89PNG-ish", "image/png")
            jobs.succeeded(session, claim, [jobs.StoredImage(0, f"jobs/{job_id}/1/0.png", "image/png", 64, 64,
                                                             "ab" * 32, 8)], timings={"queued_s": 0.5}, model=model)
        else:
            jobs.failed(session, claim, jobs.ErrorCode.OUT_OF_MEMORY, "the GPU ran out of memory", model=model)


# --- Feedback -------------------------------------------------------------------------------------------------------
def test_feedback_on_a_succeeded_job_is_recorded_once_per_job(client: FlaskClient, auth: dict[str, str], db: Database,
                                                              app: Flask) -> None:
    job_id = submit(client, auth, PICNIC)["id"]
    url = f"/v1/illustrations/{job_id}/feedback"
    queued = client.post(url, json={"rating": 5}, headers=auth)
    assert queued.status_code == 409
    assert "succeeded" in queued.json["detail"]  # type: ignore[index]
    finish(db, app, job_id)
    created = client.post(url, json={"rating": 4, "comment": "grandma looks like herself"}, headers=auth)
    assert created.status_code == 201, created.json
    assert created.json["rating"] == 4  # type: ignore[index]
    assert created.json["job_id"] == job_id  # type: ignore[index]
    again = client.post(url, json={"rating": 2, "user_id": "u-ops"}, headers=auth)
    assert again.status_code == 200  # a new rating replaces the earlier one
    with db.begin() as session:
        rows = session.execute(select(Feedback).where(Feedback.job_id == job_id)).scalars().all()
    assert [(row.rating, row.comment, row.profile, row.variant) for row in rows] == [(2, None, "tiny", "a")]


def test_feedback_input_is_checked_and_scoped(client: FlaskClient, auth: dict[str, str], db: Database,
                                              app: Flask) -> None:
    job_id = submit(client, auth, PICNIC)["id"]
    finish(db, app, job_id)
    url = f"/v1/illustrations/{job_id}/feedback"
    for body, field in (({"rating": 0}, "rating"), ({"rating": 6}, "rating"), ({"rating": "5"}, "rating"),
                        ({}, "rating"), ({"rating": 3, "comment": "x" * 2001}, "comment"),
                        ({"rating": 3, "extra": 1}, "extra")):
        response = client.post(url, json=body, headers=auth)
        assert response.status_code == 422, body
        assert response.json["errors"][0]["field"] == field  # type: ignore[index]
    assert client.post(url, json={"rating": 3, "user_id": "someone-else"}, headers=auth).status_code == 404
    other = {"Authorization": f"Bearer {make_key(db)}"}
    assert client.post(url, json={"rating": 3}, headers=other).status_code == 404
    assert client.post(f"/v1/illustrations/{uuid.uuid4()}/feedback", json={"rating": 3},
                       headers=auth).status_code == 404
    with db.begin() as session:
        assert session.execute(select(Feedback).where(Feedback.job_id == job_id)).first() is None


# --- Variants -------------------------------------------------------------------------------------------------------
def test_the_variant_is_assigned_at_submit_and_its_overrides_applied(experiment_app: Flask, db: Database) -> None:
    client = experiment_app.test_client()
    name = f"ab-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": f"Bearer {make_key(db, name)}"}
    with db.begin() as session:
        client_id = session.execute(select(Client.id).where(Client.name == name)).scalar_one()
    experiment = experiment_app.extensions["illustrations"].settings.experiment
    users = [f"user-{i}" for i in range(12)]
    seen = set()
    for user in users:
        # Steps given by the client stay; guidance left at its default takes the variant's value.
        job_id = submit(client, auth, {"user_id": user, "prompt": "a lake", "params": {"steps": 2}})["id"]
        with db.begin() as session:
            request = session.get_one(Job, job_id).request
        variant = assign(experiment, client_id, user)
        seen.add(variant)
        assert request["variant"] == variant
        assert request["experiment"] == "steps-5"
        assert request["params"]["steps"] == 2
        assert request["params"]["guidance_scale"] == (3.0 if variant == "b" else 7.5)
        again = submit(client, auth, {"user_id": user, "prompt": "another lake"})["id"]
        with db.begin() as session:
            second = session.get_one(Job, again).request
        assert second["variant"] == variant  # stable for the user
        assert second["params"]["steps"] == (5 if variant == "b" else 30)
    assert seen == {"a", "b"}


def test_without_an_experiment_every_job_is_variant_a(client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    job_id = submit(client, auth, PICNIC)["id"]
    with db.begin() as session:
        request = session.get_one(Job, job_id).request
    assert request["variant"] == "a"
    assert "experiment" not in request


# --- Quality ----------------------------------------------------------------------------------------------------------
def test_quality_needs_ops_and_a_valid_range(client: FlaskClient, auth: dict[str, str], db: Database,
                                            app: Flask) -> None:
    assert client.get("/v1/metrics/quality").status_code == 401
    assert client.get("/v1/metrics/quality", headers=auth).status_code == 403
    ops = {"Authorization": f"Bearer {make_key(db, scopes=('ops',))}"}
    for bad in ("7w", "0d", "1000d", "abc"):
        response = client.get(f"/v1/metrics/quality?range={bad}", headers=ops)
        assert response.status_code == 422, bad
        assert response.json["errors"][0]["field"] == "range"  # type: ignore[index]
    job_id = submit(client, auth, PICNIC)["id"]
    finish(db, app, job_id)
    assert client.post(f"/v1/illustrations/{job_id}/feedback", json={"rating": 5}, headers=auth).status_code == 201
    failed = submit(client, auth, PICNIC)["id"]
    finish(db, app, failed, status="failed")
    response = client.get("/v1/metrics/quality?range=24h", headers=ops)
    assert response.status_code == 200
    body: Any = response.json
    assert body["range"] == "24h"
    assert body["since"] < body["until"]
    tiny = next(group for group in body["groups"]
                if (group["profile"], group["variant"], group["quality"]) == ("tiny", "a", "final"))
    assert tiny["succeeded"] >= 1
    assert tiny["failed"] >= 1
    assert tiny["failures"].get("out_of_memory", 0) >= 1
    assert tiny["feedback"]["count"] >= 1
    assert 0 < tiny["success_rate"] < 1
    assert set(tiny["queue_wait_s"]) == {"p50", "p95"}


# --- /metrics -------------------------------------------------------------------------------------------------------
def test_metrics_need_ops_and_count_requests_by_route(client: FlaskClient, auth: dict[str, str],
                                                      db: Database) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=auth).status_code == 403
    ops = {"Authorization": f"Bearer {make_key(db, scopes=('ops',))}"}
    job_id = submit(client, auth, PICNIC)["id"]
    client.get(f"/v1/illustrations/{job_id}", headers=auth)
    response = client.get("/metrics", headers=ops)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    families = {family.name: family for family in text_string_to_metric_families(response.get_data(as_text=True))}
    requests = {(s.labels["route"], s.labels["method"], s.labels["status"]): s.value
                for s in families["illustrations_http_requests"].samples if s.name.endswith("_total")}
    assert requests[("/v1/illustrations/<job_id>", "GET", "200")] >= 1
    assert requests[("/v1/illustrations", "POST", "202")] >= 1
    assert not any(job_id in route for route, _, _ in requests)  # templates, never ids
    depth = {s.labels["queue"]: s.value for s in families["illustrations_queue_depth"].samples}
    assert depth["illustrations.interactive"] >= 1
    assert families["illustrations_database_up"].samples[0].value == 1
    assert families["illustrations_queue_oldest_age_seconds"].samples[0].value >= 0
    assert "a picnic" not in response.get_data(as_text=True)


# --- /ops -----------------------------------------------------------------------------------------------------------
def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"ops:{key}".encode()).decode()}


def test_the_ops_page_wants_an_ops_key_as_basic_password(client: FlaskClient, auth: dict[str, str], db: Database,
                                                         app: Flask) -> None:
    challenge = client.get("/ops")
    assert challenge.status_code == 401
    assert challenge.headers["WWW-Authenticate"].startswith("Basic")
    assert client.get("/ops", headers=basic("ik_wrong")).status_code == 401
    assert client.get("/ops", headers={"Authorization": "Basic !!!"}).status_code == 401
    generate_key = auth["Authorization"].removeprefix("Bearer ")
    assert client.get("/ops", headers=basic(generate_key)).status_code == 403
    ops = basic(make_key(db, scopes=("ops",)))
    ok_job, bad_job = submit(client, auth, PICNIC)["id"], submit(client, auth, PICNIC)["id"]
    finish(db, app, ok_job)
    finish(db, app, bad_job, status="failed")
    client.post(f"/v1/illustrations/{ok_job}/feedback", json={"rating": 4, "comment": "lovely <b>light</b>"},
                headers=auth)
    page = client.get("/ops", headers=ops)
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert ok_job in html
    assert bad_job in html
    assert "out_of_memory" in html
    assert "lovely &lt;b&gt;light&lt;/b&gt;" in html  # escaped
    assert f"/ops/images/{ok_job}/0" in html
    assert "a picnic" not in html  # no prompt text
    failed_only = client.get("/ops?status=failed", headers=ops).get_data(as_text=True)
    assert bad_job in failed_only
    assert ok_job not in failed_only
    assert client.get("/ops?status=nope", headers=ops).status_code == 422
    with client.get(f"/ops/images/{ok_job}/0", headers=ops) as image:
        assert image.status_code == 200
        assert image.data == b"\x89PNG-ish"
    assert client.get(f"/ops/images/{ok_job}/0").status_code == 401
    assert client.get(f"/ops/images/{ok_job}/1", headers=ops).status_code == 404


def test_request_ids_are_echoed_and_made_up(client: FlaskClient) -> None:
    given = client.get("/healthz", headers={"X-Request-ID": "req-123"})
    assert given.headers["X-Request-ID"] == "req-123"
    made = client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert made.headers["X-Request-ID"] != "bad id with spaces"
    assert len(made.headers["X-Request-ID"]) == 32


def test_log_lines_are_json_with_the_request_id(client: FlaskClient, auth: dict[str, str],
                                                capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import logging

    from shared import logs

    logs.configure("INFO", "json")
    try:
        client.post("/v1/illustrations", json={**PICNIC, "params": {"style_lora": "nope"}}, headers={
            **auth, "X-Request-ID": "req-json-1"})
        logging.getLogger("api.test").info("marker")
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert any(line["message"] == "marker" for line in lines)
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
