"""``quality: draft`` through the API, with no worker running (jobs are finished here as a worker finishes them):
validation, the variant's defaults in the stored request, the queue, the result cache keeping draft and final
apart, the quality numbers and the /ops page split by quality, and A/B variants."""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared import cache, jobs, limits, tasks
from shared.db import Database
from shared.experiments import assign
from shared.models import Client, GenerationMetric, Job
from shared.stored_request import StoredRequest
from tests.helpers import load, make_key, png, submit

REVISION = "tiny-draft0000000"
SEEDED: dict[str, Any] = {"user_id": "u-draft", "prompt": "grandma at the harbour",
                          "params": {"width": 64, "height": 64, "seed": 7}}


def draft(body: dict[str, Any] = SEEDED, **params: Any) -> dict[str, Any]:
    return {**body, "params": {**body["params"], "quality": "draft", **params}}


def finish(app: Flask, db: Database, job_id: str, quality: str, *, failed: bool = False) -> None:
    """What a GPU worker does at the end of an attempt: store the image, finish fenced, write the metrics row."""
    data = png((64, 64), "blue" if quality == "draft" else "red")
    with db.begin() as session:
        claim = jobs.started(session, job_id, "gpu0@test", 60)
        assert isinstance(claim, jobs.Claim)
        job = session.get_one(Job, job_id)
        model = {"profile": "tiny", "revision": REVISION, "variant": "a", "quality": quality}
        if failed:
            assert jobs.failed(session, claim, jobs.ErrorCode.SETUP_FAILED, "no draft file", model=model)
        else:
            key = f"jobs/{job_id}/1/0.png"
            app.extensions["illustrations"].storage.put(key, data, "image/png")
            image = jobs.StoredImage(0, key, "image/png", 64, 64, hashlib.sha256(data).hexdigest(), len(data))
            assert jobs.succeeded(session, claim, [image], model=model, timings={"queued_s": 0.1, "inference_s": 0.2})
        session.add(GenerationMetric(job_id=job_id, client_id=job.client_id, user_id=job.user_id, attempt=1,
                                     outcome="failed" if failed else "succeeded", queue=job.queue, queue_wait_s=0.1,
                                     inference_s=0.2, total_s=0.3, steps=job.request["params"]["steps"], width=64,
                                     height=64, num_images=1, identity_refs=0, style_ref=False, embeddings_cached=0,
                                     profile="tiny", revision=REVISION, variant="a", quality=quality))


def stored(db: Database, job_id: str) -> StoredRequest:
    return StoredRequest.model_validate(load(db, job_id).request)


# --- the request ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["sketch", "", "DRAFT", 1, None, ["draft"]])
def test_an_unknown_quality_is_refused_naming_the_field(client: FlaskClient, auth: dict[str, str],
                                                        value: Any) -> None:
    response = client.post("/v1/illustrations", json={**SEEDED, "params": {"quality": value}}, headers=auth)
    assert response.status_code == 422
    body: Any = response.json
    assert [error["field"] for error in body["errors"]] == ["params.quality"]


def test_a_draft_runs_its_variants_steps_and_guidance_unless_given(client: FlaskClient, auth: dict[str, str],
                                                                   db: Database) -> None:
    job = submit(client, auth, draft())
    params = stored(db, job["id"]).params
    assert (params.quality, params.steps, params.guidance_scale) == ("draft", limits.DEFAULT_DRAFT_STEPS,
                                                                     limits.DEFAULT_DRAFT_GUIDANCE)
    given = stored(db, submit(client, auth, draft(steps=6, guidance_scale=1.5))["id"]).params
    assert (given.steps, given.guidance_scale) == (6, 1.5)  # what the client asks for, it gets
    final = stored(db, submit(client, auth, SEEDED)["id"]).params
    assert (final.quality, final.steps, final.guidance_scale) == ("final", limits.DEFAULT_STEPS,
                                                                  limits.DEFAULT_GUIDANCE)


def test_a_draft_goes_to_the_interactive_queue_even_in_a_batch(client: FlaskClient, auth: dict[str, str],
                                                               db: Database) -> None:
    asked_batch = submit(client, auth, {**draft(), "priority": "batch"})
    assert load(db, asked_batch["id"]).queue == tasks.QUEUE_INTERACTIVE
    assert asked_batch["priority"] == "interactive"
    response = client.post("/v1/batches", json={"requests": [draft(), SEEDED]}, headers=auth)
    assert response.status_code == 202, response.json
    first, second = (load(db, job_id) for job_id in response.json["job_ids"])  # type: ignore[index]
    assert (first.queue, second.queue) == (tasks.QUEUE_INTERACTIVE, tasks.QUEUE_BATCH)


# --- the answer, the cache -------------------------------------------------------------------------------------
def test_the_job_says_which_quality_ran(client: FlaskClient, auth: dict[str, str], app: Flask, db: Database) -> None:
    job = submit(client, auth, draft(seed=None))
    finish(app, db, job["id"], "draft")
    answer: Any = client.get(f"/v1/illustrations/{job['id']}", headers=auth).json
    assert answer["model"]["quality"] == "draft"
    assert answer["progress"] == {"step": limits.DEFAULT_DRAFT_STEPS, "total": limits.DEFAULT_DRAFT_STEPS}


def test_draft_and_final_are_cached_apart(client: FlaskClient, auth: dict[str, str], app: Flask,
                                          db: Database) -> None:
    body = {**SEEDED, "user_id": f"u-{uuid.uuid4().hex[:8]}", "prompt": f"a harbour {uuid.uuid4().hex[:6]}"}
    first_draft = submit(client, auth, draft(body))
    finish(app, db, first_draft["id"], "draft")
    # The same final request is not answered by the draft's image: it queues, and so does its draft twin's final.
    final = submit(client, auth, body)
    assert (final["status"], final["cached"]) == ("queued", False)
    again = submit(client, auth, draft(body))
    assert (again["status"], again["cached"]) == ("succeeded", True)
    assert again["model"]["quality"] == "draft"
    finish(app, db, final["id"], "final")
    final_again = submit(client, auth, body)
    assert (final_again["status"], final_again["cached"], final_again["model"]["quality"]) == \
        ("succeeded", True, "final")
    # The same draft with the final's steps and guidance is still a draft: another key.
    explicit = submit(client, auth, draft(body, steps=limits.DEFAULT_STEPS, guidance_scale=limits.DEFAULT_GUIDANCE))
    assert (explicit["status"], explicit["cached"]) == ("queued", False)


def test_final_keys_are_those_made_before_qualities_existed() -> None:
    request = StoredRequest.model_validate({
        "prompt": "p", "resolved": {"identity": [], "style": None}, "variant": "a",
        "params": {"width": 64, "height": 64, "steps": 30, "guidance_scale": 7.5, "seed": 1, "num_images": 1,
                   "identity_scale": 0.6, "style_scale": 0.8, "content_scale": 0.0},
    })
    assert request.params.quality == "final"  # a row from before qualities
    document = cache.key_document("c", "tiny", request, "p", None)
    assert "quality" not in document["params"]
    drafted = request.model_copy(update={"params": request.params.model_copy(update={"quality": "draft"})})
    assert cache.key_document("c", "tiny", drafted, "p", None)["params"]["quality"] == "draft"
    assert cache.compute_key("c", "tiny", drafted, "p", None) != cache.compute_key("c", "tiny", request, "p", None)


# --- numbers and the ops page ------------------------------------------------------------------------------------
def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"ops:{key}".encode()).decode()}


def test_quality_numbers_and_the_ops_page_split_by_quality(client: FlaskClient, auth: dict[str, str], app: Flask,
                                                           db: Database) -> None:
    drafts = [submit(client, auth, draft(seed=None))["id"] for _ in range(2)]
    finals = [submit(client, auth, {**SEEDED, "params": {"width": 64, "height": 64}})["id"] for _ in range(2)]
    finish(app, db, drafts[0], "draft")
    finish(app, db, drafts[1], "draft", failed=True)
    for job_id in finals:
        finish(app, db, job_id, "final")
    rated = client.post(f"/v1/illustrations/{drafts[0]}/feedback", json={"rating": 2}, headers=auth)
    assert rated.status_code == 201
    ops_key = make_key(db, scopes=("ops",))
    body: Any = client.get("/v1/metrics/quality?range=24h", headers={"Authorization": f"Bearer {ops_key}"}).json
    groups = {(g["profile"], g["variant"], g["quality"]): g for g in body["groups"]}
    draft_group, final_group = groups[("tiny", "a", "draft")], groups[("tiny", "a", "final")]
    assert draft_group["succeeded"] >= 1 and draft_group["failures"].get("setup_failed", 0) >= 1
    assert draft_group["inference_s"]["p50"] is not None
    assert draft_group["feedback"]["count"] >= 1
    assert final_group["succeeded"] >= 2 and "setup_failed" not in final_group["failures"]

    page = client.get("/ops?quality=draft", headers=basic(ops_key)).get_data(as_text=True)
    assert all(job_id in page for job_id in drafts) and not any(job_id in page for job_id in finals)
    assert '<span class="quality draft">draft</span>' in page
    finals_page = client.get("/ops?quality=final", headers=basic(ops_key)).get_data(as_text=True)
    assert all(job_id in finals_page for job_id in finals) and drafts[0] not in finals_page
    assert client.get("/ops?quality=sketch", headers=basic(ops_key)).status_code == 422


# --- A/B variants ----------------------------------------------------------------------------------------------
def test_a_variants_steps_and_guidance_do_not_reach_a_draft(experiment_app: Flask, db: Database) -> None:
    client = experiment_app.test_client()
    name = f"ab-{uuid.uuid4().hex[:8]}"
    auth = {"Authorization": f"Bearer {make_key(db, name)}"}
    experiment = experiment_app.extensions["illustrations"].settings.experiment
    with db.begin() as session:
        client_id = session.query(Client.id).filter(Client.name == name).scalar()
    users = [f"user-{i}" for i in range(12)]
    variants = {user: assign(experiment, client_id, user) for user in users}
    assert set(variants.values()) == {"a", "b"}
    for user, variant in variants.items():
        drafted = stored(db, submit(client, auth, {"user_id": user, "prompt": "a lake",
                                                   "params": {"quality": "draft"}})["id"])
        assert drafted.variant == variant
        assert (drafted.params.steps, drafted.params.guidance_scale) == (limits.DEFAULT_DRAFT_STEPS,
                                                                         limits.DEFAULT_DRAFT_GUIDANCE)
        final = stored(db, submit(client, auth, {"user_id": user, "prompt": "a lake"})["id"])
        assert final.params.steps == (5 if variant == "b" else limits.DEFAULT_STEPS)
