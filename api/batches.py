"""Batches: many illustration requests accepted together (all or none), followed by their counts per state.

Each request is validated as ``POST /v1/illustrations`` would (errors name ``requests.{i}.field``); every job is
written in one transaction. A request that does not name its ``priority`` goes to the batch queue.
"""

from __future__ import annotations

from datetime import datetime

from flask import Blueprint, Flask, Response, jsonify
from sqlalchemy import select

from api import submit
from api.auth import current_principal, require
from api.body import json_body
from api.errors import FieldError, not_found, validation_error
from api.idempotency import idempotent
from api.openapi import IDEMPOTENCY_KEY, Returns, operation
from api.services import services
from api.views import job_out
from shared import jobs
from shared.models import Batch, Job
from shared.schemas import BatchCreated, BatchOut, BatchRequest
from shared.states import JobStatus
from shared.stored_request import RequestOutline

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")


def batch_path(batch_id: str) -> str:
    return f"/v1/batches/{batch_id}"


@bp.post("")
@require("generate")
@operation("Submit a batch of illustration jobs", tags=["batches"], body=BatchRequest, headers=[IDEMPOTENCY_KEY],
           responses={202: Returns("Accepted: every job, queued.", BatchCreated, headers=("Location",))},
           errors=(409,))
@idempotent
def create_batch() -> tuple[Response, int, dict[str, str]]:
    body = json_body(BatchRequest)
    principal = current_principal()
    svc = services()
    errors: list[FieldError] = []
    submit.check_webhook_url(body.webhook_url, "webhook_url", svc, errors)
    if errors:
        raise validation_error(errors)
    priorities = [r.priority if "priority" in r.model_fields_set else "batch" for r in body.requests]
    batch = Batch(client_id=principal.client_id, webhook_url=body.webhook_url)

    def answer(rows: list[Job]) -> submit.Answer:
        out = BatchCreated(id=batch.id, job_ids=[job.id for job in rows], links={"self": batch_path(batch.id)})
        return submit.Answer(out.model_dump(mode="json"), {"Location": batch_path(batch.id)})

    created = submit.create(svc, principal, body.requests, answer, batch=batch, priorities=priorities,
                            prefixes=[f"requests.{i}." for i in range(len(body.requests))])
    submit.mark(svc, created.published)
    return jsonify(created.answer.body), 202, created.answer.headers


def _request_order(job: Job) -> tuple[int, datetime, str]:
    """A batch lists its jobs in the order of its requests."""
    return RequestOutline.model_validate(job.request).batch_index or 0, job.created_at, job.id


@bp.get("/<batch_id>")
@require("generate")
@operation("Read a batch: counts per state and its jobs", tags=["batches"],
           responses={200: Returns("The batch.", BatchOut)}, errors=(404,))
def get_batch(batch_id: str) -> Response:
    svc = services()
    with svc.db.begin() as session:
        batch = session.execute(
            select(Batch).where(Batch.id == batch_id, Batch.client_id == current_principal().client_id)
        ).scalar_one_or_none()
        if batch is None:
            raise not_found("batch")
        rows = sorted(session.execute(select(Job).where(Job.batch_id == batch.id)).scalars(), key=_request_order)
        counts = {state.value: 0 for state in JobStatus}
        for job in rows:
            counts[job.status] += 1
        views = [job_out(job, queue_position=jobs.queue_position(session, job)) for job in rows]
        out = BatchOut(id=batch.id, created_at=batch.created_at, counts=counts, jobs=views,
                       links={"self": batch_path(batch.id)})
    return jsonify(out.model_dump(mode="json"))


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
