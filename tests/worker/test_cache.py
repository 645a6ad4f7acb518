"""The result cache and dedupe with the real generation path (tiny model, real database and storage): two jobs, one
pipeline run; a later identical request answered from what the worker stored; reference embeddings reused."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from shared import jobs
from shared.db import Database
from shared.models import Job
from tests.helpers import image_keys, metric_rows, png, submit, upload
from worker.generation import run_generation
from worker.runtime import Runtime

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

BODY = {"user_id": "u-1", "prompt": "grandma teaching me to ride a bike", "subjects": [{"name": "grandma"}],
        "params": {"width": 64, "height": 64, "steps": 2, "seed": 42}}


def test_two_identical_jobs_one_pipeline_run_then_a_hit(client: FlaskClient, auth: dict[str, str], db: Database,
                                                        runtime: Runtime) -> None:
    upload(client, auth, data=png((48, 48), "peru"))
    leader = submit(client, auth, BODY)
    follower = submit(client, auth, {**BODY, "metadata": {"memory_id": "m-2"}})
    with db.begin() as session:
        assert session.get_one(Job, follower["id"]).follows_job_id == leader["id"]

    assert run_generation(leader["id"], runtime) == "succeeded"
    assert run_generation(follower["id"], runtime) == "skipped:terminal"  # a stray message would not run it

    done: Any = client.get(f"/v1/illustrations/{follower['id']}", headers=auth).json
    first: Any = client.get(f"/v1/illustrations/{leader['id']}", headers=auth).json
    assert first["status"] == done["status"] == "succeeded"
    assert done["cached"] is True
    assert first["cached"] is False
    assert done["images"][0]["sha256"] == first["images"][0]["sha256"]
    assert image_keys(db, follower["id"]) == image_keys(db, leader["id"])
    assert [row.job_id for row in metric_rows(db, [leader["id"], follower["id"]])] == [leader["id"]]  # one run
    with db.begin() as session:
        assert [t[1] for t in jobs.transitions(session, follower["id"])] == ["queued", "succeeded"]  # never ran

    # The worker recorded its revision on the job and its metrics row: the next identical request is a hit.
    hit = submit(client, auth, BODY, headers={"Prefer": "wait=5"})
    assert hit["status"] == "succeeded"
    assert hit["cached"] is True
    assert hit["model"]["revision"] == first["model"]["revision"]
    assert hit["images"][0]["sha256"] == first["images"][0]["sha256"]
    assert len(metric_rows(db, [leader["id"], follower["id"], hit["id"]])) == 1


def test_a_second_job_with_the_same_reference_reuses_its_embedding(client: FlaskClient, auth: dict[str, str],
                                                                   db: Database, runtime: Runtime) -> None:
    def hits() -> float:
        return REGISTRY.get_sample_value("illustrations_embedding_cache_lookups_total", {"result": "hit"}) or 0.0

    upload(client, auth, data=png((48, 48), "teal"))
    ids = [submit(client, auth, {**BODY, "params": {**BODY["params"], "seed": seed}})["id"] for seed in (1, 2)]
    before = hits()
    for job_id in ids:
        assert run_generation(job_id, runtime) == "succeeded"
    rows = metric_rows(db, ids)
    assert [(row.identity_refs, row.embeddings_cached) for row in rows] == [(1, 0), (1, 1)]
    assert hits() == before + 1
