"""Feedback: ``POST /v1/illustrations/{id}/feedback`` (``generate``) → 201, a user's rating of an illustration.

One rating per job: 201 the first time, 200 for a new one, which replaces it (the latest wins). One upsert writes
it (``shared.db.upsert``), so ratings of the same job posted at once never fail on the primary key. Only a
succeeded job can be rated (409 otherwise). The model profile, A/B variant and quality the job ran with are copied
onto the row, so the quality numbers (``GET /v1/metrics/quality``) compare variants by rating without a join. The
comment is never logged (nor is any value of a database error: ``shared.db_errors``).
"""

from __future__ import annotations

from typing import cast

from flask import Blueprint, Flask, Response, jsonify
from sqlalchemy import Table, select

from api.auth import require
from api.body import json_body
from api.errors import ApiError
from api.illustrations import owned_job
from api.openapi import Returns, operation
from api.services import services
from shared.db import upsert, utcnow
from shared.models import Feedback
from shared.schemas import FeedbackOut, FeedbackRequest
from shared.states import JobStatus
from shared.stored_request import RequestOutline

bp = Blueprint("feedback", __name__, url_prefix="/v1/illustrations")


@bp.post("/<job_id>/feedback")
@require("generate")
@operation(
    "Rate an illustration", tags=["illustrations"], body=FeedbackRequest,
    description="A rating from 1 to 5 and an optional comment. One per job: a new one replaces the earlier (the "
                "latest wins; ratings posted at once never fail). Only a succeeded job can be rated (409).",
    responses={201: Returns("Recorded: the job's first rating.", FeedbackOut),
               200: Returns("Recorded: it replaces the job's earlier rating.", FeedbackOut)},
    errors=(404, 409),
)
def create_feedback(job_id: str) -> tuple[Response, int]:
    body = json_body(FeedbackRequest)
    svc = services()
    with svc.db.begin() as session:
        job = owned_job(session, job_id, body.user_id)
        if job.status != JobStatus.SUCCEEDED.value:
            raise ApiError(409, "Conflict", f"only a succeeded illustration can be rated; this one is {job.status}")
        model = job.model or {}
        created = upsert(session, cast(Table, Feedback.__table__), {
            "job_id": job.id, "client_id": job.client_id, "user_id": job.user_id, "rating": body.rating,
            "comment": body.comment, "profile": model.get("profile"),
            "variant": model.get("variant") or RequestOutline.model_validate(job.request).variant,
            "quality": model.get("quality") or "final",
        }, key=["job_id"], refresh={"created_at": utcnow()})
        row = session.execute(select(Feedback).where(Feedback.job_id == job.id)).scalar_one()
        out = FeedbackOut(job_id=row.job_id, user_id=row.user_id, rating=row.rating, comment=row.comment,
                          created_at=row.created_at)
    return jsonify(out.model_dump(mode="json")), 201 if created else 200


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
