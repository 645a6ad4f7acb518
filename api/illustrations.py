"""Illustrations: submit (validate, write the row, commit, publish the id), read, and download images."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, redirect, request, send_file
from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.wrappers import Response as WerkzeugResponse

from api.auth import current_principal, require
from api.body import json_body
from api.errors import ApiError, not_found, validation_error
from api.idempotency import idempotent, record
from api.services import services
from api.subjects import latest_version
from api.views import job_out, job_path
from shared import jobs, limits
from shared.models import Job, JobImage, Subject
from shared.prompts import build_prompt
from shared.schemas import IllustrationRequest, ImageRef, SubjectRef
from shared.tasks import QUEUE_BY_PRIORITY

log = logging.getLogger(__name__)
bp = Blueprint("illustrations", __name__, url_prefix="/v1/illustrations")


def _reference(session: Session, client_id: str, user_id: str, *, subject_id: str | None = None,
               name: str | None = None) -> dict[str, Any] | None:
    """The latest stored version of one of this user's subjects, as the worker needs it."""
    query = select(Subject).where(Subject.client_id == client_id, Subject.user_id == user_id)
    query = query.where(Subject.id == subject_id) if subject_id is not None else query.where(Subject.name == name)
    subject = session.execute(query).scalar_one_or_none()
    version = latest_version(session, subject.id) if subject is not None else None
    if subject is None or version is None:
        return None
    return {
        "subject_id": subject.id,
        "name": subject.name,
        "version": version.version,
        "storage_key": version.storage_key,
        "sha256": version.sha256,
    }


def resolve_references(session: Session, client_id: str, body: IllustrationRequest) -> dict[str, Any]:
    """Subjects and the style reference resolved to stored versions at submit; unknown ones are a 422."""
    errors: list[tuple[str, str]] = []
    identity: list[dict[str, Any]] = []
    for i, ref in enumerate(body.subjects):
        resolved = _resolve_one(session, client_id, body.user_id, ref, f"subjects.{i}", errors)
        if resolved is not None:
            identity.append(resolved)
    style = None
    if body.style is not None and body.style.reference is not None:
        style = _resolve_one(session, client_id, body.user_id, body.style.reference, "style.reference", errors)
    if body.params.style_lora is not None:
        errors.append(("params.style_lora", "unknown style"))
    if body.webhook_url is not None:
        errors.append(("webhook_url", "webhook delivery is not enabled on this deployment yet"))
    if errors:
        raise validation_error(errors)
    return {"identity": identity, "style": style}


def _resolve_one(session: Session, client_id: str, user_id: str, ref: SubjectRef | ImageRef, field: str,
                 errors: list[tuple[str, str]]) -> dict[str, Any] | None:
    if ref.image_url is not None:
        errors.append((f"{field}.image_url", "references by URL are not enabled on this deployment yet; "
                                             "upload the photo with POST /v1/subjects"))
        return None
    name = ref.name if isinstance(ref, SubjectRef) else None
    resolved = _reference(session, client_id, user_id, subject_id=ref.subject_id, name=name)
    if resolved is None:
        errors.append((field, "no such subject for this user"))
    return resolved


@bp.post("")
@require("generate")
@idempotent
def create_illustration() -> tuple[Response, int, dict[str, str]]:
    body = json_body(IllustrationRequest)
    principal = current_principal()
    svc = services()
    seed = body.params.seed if body.params.seed is not None else secrets.randbelow(limits.SEED_MAX + 1)
    prompt_used, warnings = build_prompt(body)
    queue = QUEUE_BY_PRIORITY[body.priority]
    with svc.db.begin() as session:
        references = resolve_references(session, principal.client_id, body)
        request_doc = body.model_dump(mode="json", exclude={"metadata", "webhook_url", "cancel_after"})
        request_doc["params"]["seed"] = seed
        request_doc["resolved"] = references
        job = jobs.new_job(
            client_id=principal.client_id,
            user_id=body.user_id,
            priority=body.priority,
            queue=queue,
            request=request_doc,
            seed=seed,
            prompt_used=prompt_used,
            warnings=warnings,
            meta=body.metadata,
            webhook_url=body.webhook_url,
            cancel_after=body.cancel_after,
        )
        session.add(job)
        session.flush()
        view = job_out(job, queue_position=None).model_dump(mode="json")
        headers = {"Location": job_path(job.id)}
        record(session, 202, view, headers, user_id=body.user_id)  # what a retry with the same key gets
        # Over the client's cap, the job waits here and the relay publishes it when the client has room.
        publish = jobs.has_room(session, principal.client_id, queue, svc.settings.client_publish_cap)
    if publish:
        publish_now(job.id, queue)
    return jsonify(view), 202, headers


def publish_now(job_id: str, queue: str) -> None:
    """Outbox: the row is committed; a failed publish (or mark) leaves it to the relay, the client gets its 202."""
    svc = services()
    if not svc.publisher.publish(job_id, queue):
        return
    try:
        with svc.db.begin() as session:
            jobs.mark_published(session, job_id)
    except Exception as exc:  # the database went away after the commit: the relay publishes again (dropped twin)
        log.warning("job %s published but not marked (%s); the relay will publish it again", job_id,
                    type(exc).__name__)


def _owned_job(session: Session, job_id: str) -> Job:
    principal = current_principal()
    job = session.execute(
        select(Job).where(Job.id == job_id, Job.client_id == principal.client_id)
    ).scalar_one_or_none()
    user_id = request.args.get("user_id")
    if job is None or (user_id is not None and job.user_id != user_id):
        raise not_found("illustration")
    return job


@bp.get("/<job_id>")
@require("generate")
def get_illustration(job_id: str) -> Response:
    with services().db.begin() as session:
        job = _owned_job(session, job_id)
        view = job_out(job, queue_position=jobs.queue_position(session, job))
    return jsonify(view.model_dump(mode="json"))


@bp.get("/<job_id>/images/<int:index>")
@require("generate")
def get_image(job_id: str, index: int) -> WerkzeugResponse:
    svc = services()
    with svc.db.begin() as session:
        job = _owned_job(session, job_id)
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

