"""Batches: atomic creation (all jobs or none), the batch queue by default, counts per state."""

from __future__ import annotations

import uuid
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select

from shared import jobs
from shared.db import Database
from shared.errors import CancelReason
from shared.models import Batch, Job
from tests.helpers import VALID, count_jobs, make_key


def test_a_batch_creates_every_job_and_counts_them(client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    requests = [{**VALID, "prompt": f"memory {i}"} for i in range(3)]
    requests.append({**VALID, "priority": "interactive"})
    response = client.post("/v1/batches", json={"requests": requests}, headers=auth)
    assert response.status_code == 202, response.json
    created: Any = response.json
    assert len(created["job_ids"]) == 4
    assert response.headers["Location"] == f"/v1/batches/{created['id']}"
    with db.begin() as session:
        rows = {job.id: job for job in session.execute(select(Job).where(Job.batch_id == created["id"])).scalars()}
        assert set(rows) == set(created["job_ids"])
        assert [rows[i].queue for i in created["job_ids"]] == ["illustrations.batch"] * 3 + [
            "illustrations.interactive"]
        assert all(job.published_at is not None for job in rows.values())
        claim = jobs.started(session, created["job_ids"][0], "w", 60)
        assert isinstance(claim, jobs.Claim)
        jobs.canceled(session, created["job_ids"][1], CancelReason.CANCELED_BY_CLIENT)
    batch: Any = client.get(f"/v1/batches/{created['id']}", headers=auth).json
    assert batch["counts"] == {"queued": 2, "running": 1, "succeeded": 0, "failed": 0, "canceled": 1}
    assert [job["id"] for job in batch["jobs"]] == created["job_ids"]
    assert batch["links"] == {"self": f"http://localhost/v1/batches/{created['id']}"}
    with db.begin() as session:  # leave no running job behind (the lease sweep tests see every job)
        jobs.canceled(session, created["job_ids"][0], CancelReason.CANCELED_BY_CLIENT, claim)


def test_one_bad_request_refuses_the_whole_batch(client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    before = count_jobs(db)
    with db.begin() as session:
        batches_before = session.execute(select(func.count()).select_from(Batch)).scalar_one()
    requests = [VALID, {**VALID, "params": {"steps": 0}}, VALID, {**VALID, "subjects": [{"name": "nobody"}]}]
    response = client.post("/v1/batches", json={"requests": requests}, headers=auth)
    assert response.status_code == 422
    fields = [error["field"] for error in response.json["errors"]]  # type: ignore[index]
    assert "requests.1.params.steps" in fields
    assert count_jobs(db) == before
    with db.begin() as session:
        assert session.execute(select(func.count()).select_from(Batch)).scalar_one() == batches_before
    resolved_only = client.post("/v1/batches", json={"requests": [VALID, {**VALID, "subjects": [{"name": "x"}]}]},
                                headers=auth)
    assert resolved_only.status_code == 422
    assert [e["field"] for e in resolved_only.json["errors"]] == ["requests.1.subjects.0"]  # type: ignore[index]
    assert count_jobs(db) == before


def test_batch_limits_and_shape(client: FlaskClient, auth: dict[str, str]) -> None:
    for body, field in (({"requests": []}, "requests"), ({"requests": [VALID] * 101}, "requests"),
                        ({}, "requests"), ({"requests": [VALID], "extra": 1}, "extra"),
                        ({"requests": [VALID], "webhook_url": "http://192.168.1.5/x"}, "webhook_url")):
        response = client.post("/v1/batches", json=body, headers=auth)
        assert response.status_code == 422, body
        assert field in [e["field"] for e in response.json["errors"]]  # type: ignore[index]


def test_batches_of_others_are_404(client: FlaskClient, auth: dict[str, str], db: Database) -> None:
    created: Any = client.post("/v1/batches", json={"requests": [VALID]}, headers=auth).json
    other = {"Authorization": f"Bearer {make_key(db)}"}
    assert client.get(f"/v1/batches/{created['id']}", headers=other).status_code == 404
    assert client.get(f"/v1/batches/{uuid.uuid4()}", headers=auth).status_code == 404
