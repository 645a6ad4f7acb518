"""Illustrations: submit, read (optionally waiting), list with a cursor, cancel, and download images."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify, redirect, request, send_file
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as WerkzeugResponse

from api import submit
from api.auth import current_principal, require
from api.body import json_body, query_args
from api.errors import ApiError, not_found
from api.idempotency import idempotent
from api.openapi import IDEMPOTENCY_KEY, PREFER, Returns, operation
from api.pagination import newest_page
from api.services import Services, services
from api.views import job_out, job_path
from api.waiting import prefer_wait
from shared import jobs
from shared.errors import CancelReason
from shared.models import Job, JobImage
from shared.schemas import CancelRequest, IllustrationRequest, JobList, JobListQuery, JobOut, OwnerQuery
from shared.states import TERMINAL, JobStatus

bp = Blueprint("illustrations", __name__, url_prefix="/v1/illustrations")

TERMINAL_VALUES = frozenset(state.value for state in TERMINAL)


def is_finished(svc: Services, job_id: str) -> bool:
    with svc.db.begin() as session:
        status = session.execute(select(Job.status).where(Job.id == job_id)).scalar_one_or_none()
    return status is None or status in TERMINAL_VALUES


def wait_for(svc: Services, job_id: str, seconds: float | None) -> bool:
    """Hold the request until the job finishes or ``seconds`` pass (``Prefer: wait``); whether it finished."""
    if not seconds:
        return is_finished(svc, job_id)
    return svc.waiter.wait(job_id, seconds, lambda: is_finished(svc, job_id))


def owned_job(session: Session, job_id: str, user_id: str | None) -> Job:
    """This client's job (and this user's, when ``user_id`` is given), else 404."""
    job = session.execute(
        select(Job).where(Job.id == job_id, Job.client_id == current_principal().client_id)
    ).scalar_one_or_none()
    if job is None or (user_id is not None and job.user_id != user_id):
        raise not_found("illustration")
    return job


def read_job(svc: Services, job_id: str) -> JobOut:
    with svc.db.begin() as session:
        job = session.get_one(Job, job_id)
        return job_out(job, queue_position=jobs.queue_position(session, job))


@bp.post("")
@require("generate")
@operation(
    "Submit an illustration job", tags=["illustrations"], body=IllustrationRequest,
    headers=[PREFER, IDEMPOTENCY_KEY],
    responses={202: Returns("Accepted: the job, queued.", JobOut, headers=("Location",)),
               200: Returns("With `Prefer: wait`: the job finished within the wait (a result cache hit, `cached: "
                            "true`, is finished at once).", JobOut,
                            headers=("Location", "Preference-Applied"))},
    errors=(409,),
)
@idempotent
def create_illustration() -> tuple[Response, int, dict[str, str]]:
    body = json_body(IllustrationRequest)
    svc = services()
    wait = prefer_wait(request.headers.get("Prefer"), svc.settings.prefer_wait_max_s)
    # The answer (and what a retry with the same Idempotency-Key gets): the job as accepted.
    created = submit.create(svc, current_principal(), [body], lambda session, rows: submit.Answer(
        job_out(rows[0], queue_position=jobs.queue_position(session, rows[0])).model_dump(mode="json"),
        {"Location": job_path(rows[0].id)}))
    (job,), answer = created.jobs, created.answer
    if wait is None:
        response = jsonify(answer.body)
        response.call_on_close(lambda: submit.mark(svc, created.published))  # the outbox mark, once it is sent
        return response, 202, answer.headers
    submit.mark(svc, created.published)  # before waiting: a long wait must not leave the job to the relay
    headers = {**answer.headers, "Preference-Applied": f"wait={wait:g}"}
    if job.status in TERMINAL_VALUES:  # a result cache hit is born finished: nothing to wait for
        return jsonify(answer.body), 200, headers
    finished = wait_for(svc, job.id, wait)
    view = read_job(svc, job.id)
    return jsonify(view.model_dump(mode="json")), 200 if finished else 202, headers


@bp.get("")
@require("generate")
@operation("List jobs, newest first", tags=["illustrations"], query=JobListQuery,
           responses={200: Returns("A page of jobs and the cursor of the next page (null at the end).", JobList)})
def list_illustrations() -> Response:
    args = query_args(JobListQuery)
    svc = services()
    query = select(Job).where(Job.client_id == current_principal().client_id)
    if args.user_id is not None:
        query = query.where(Job.user_id == args.user_id)
    if args.status is not None:
        query = query.where(Job.status == args.status)
    with svc.db.begin() as session:
        page, next_cursor = newest_page(session, query, Job, args.cursor, args.limit)
        items = [job_out(job, queue_position=jobs.queue_position(session, job)) for job in page]
    return jsonify(JobList(items=items, next_cursor=next_cursor).model_dump(mode="json"))


@bp.get("/<job_id>")
@require("generate")
@operation("Read a job", tags=["illustrations"], query=OwnerQuery, headers=[PREFER],
           responses={200: Returns("The job (with `Prefer: wait`, once finished or when the wait is over).", JobOut)},
           errors=(404,))
def get_illustration(job_id: str) -> Response:
    args = query_args(OwnerQuery)
    svc = services()
    with svc.db.begin() as session:
        owned_job(session, job_id, args.user_id)
    wait = prefer_wait(request.headers.get("Prefer"), svc.settings.prefer_wait_max_s)
    if wait:
        wait_for(svc, job_id, wait)
    response = jsonify(read_job(svc, job_id).model_dump(mode="json"))
    if wait is not None:
        response.headers["Preference-Applied"] = f"wait={wait:g}"
    return response


def _cancel_body() -> CancelRequest:
    if not request.get_data(cache=True):
        return CancelRequest()
    return json_body(CancelRequest)


@bp.post("/<job_id>/cancel")
@require("generate")
@operation(
    "Cancel a job", tags=["illustrations"], body=CancelRequest, body_required=False,
    description="A queued job is canceled at once (200 with the job, `canceled`). A running job stops at its next "
                "step and stores nothing (202; it then ends `canceled`). A finished job is unchanged (200).",
    responses={200: Returns("Canceled now, or already finished (unchanged).", JobOut),
               202: Returns("Running: it stops at its next step.", JobOut)},
    errors=(404,),
)
def cancel_illustration(job_id: str) -> tuple[Response, int]:
    body = _cancel_body()
    svc = services()
    with svc.db.begin() as session:
        job = owned_job(session, job_id, body.user_id)
        status = 200
        if job.status == JobStatus.QUEUED.value and jobs.canceled(session, job.id, CancelReason.CANCELED_BY_CLIENT):
            pass
        elif jobs.request_cancel(session, job.id):
            status = 202
    view = read_job(svc, job_id)
    return jsonify(view.model_dump(mode="json")), status


@bp.get("/<job_id>/images/<int:index>")
@require("generate")
@operation(
    "Download an image of a finished job", tags=["illustrations"], query=OwnerQuery,
    responses={200: Returns("The image (local store).", binary=("image/png", "image/jpeg", "image/webp")),
               302: Returns("A presigned URL of the image (S3).", headers=("Location",))},
    errors=(404,),
)
def get_image(job_id: str, index: int) -> WerkzeugResponse:
    args = query_args(OwnerQuery)
    svc = services()
    with svc.db.begin() as session:
        job = owned_job(session, job_id, args.user_id)
        image = session.execute(
            select(JobImage).where(JobImage.job_id == job.id, JobImage.index == index)
        ).scalar_one_or_none()
        if image is None:
            raise not_found("image")
    url = svc.storage.presigned_url(image.storage_key)
    if url is not None:
        return redirect(url, code=302)
    path = svc.storage.local_path(image.storage_key)
    if path is None or not path.is_file():
        raise ApiError(404, "Not Found", "the image is no longer stored")
    return send_file(path, mimetype=image.content_type, max_age=3600, etag=image.sha256)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
