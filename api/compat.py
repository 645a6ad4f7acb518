"""AutoBio's existing endpoint, ``POST /api/illustrations/generate`` and ``GET /api/illustrations/{id}``.

A thin translation onto the v1 job (``api.autobio``): the camelCase request becomes an ``IllustrationRequest``
and goes through the same submission path; the answer waits up to ``compat_wait_s`` (25 s; ``Prefer: wait=N``
overrides) and is ``200 {imageUrl, generationId, metadata: {model, parameters, generationTime}}`` when the image is
ready, else ``202 {generationId, status, statusUrl}``; the status route answers the same shapes. A job that ended
without an image is a problem+json: 422 when its input could not be used (``reference_*``, ``style_not_found``),
409 when it was canceled, 503 with ``Retry-After`` when the service failed it (retrying may help).
"""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from pydantic import ValidationError

from api import submit
from api.auth import current_principal, require
from api.autobio import GeneratePending, GenerateRequest, GenerateResult, ResultMetadata, to_v1, v1_field
from api.body import json_body
from api.errors import ApiError, fields_of, problem_field, validation_error
from api.idempotency import idempotent
from api.illustrations import owned_job, wait_for
from api.openapi import IDEMPOTENCY_KEY, PREFER, Returns, operation
from api.services import Services, services
from api.views import base_url, job_path
from api.waiting import prefer_wait
from shared.errors import ProblemCode
from shared.models import Job
from shared.schemas import IllustrationRequest
from shared.states import JobStatus
from shared.stored_request import StoredRequest

bp = Blueprint("autobio", __name__, url_prefix="/api/illustrations")

INPUT_ERRORS = frozenset({"reference_unreachable", "reference_blocked", "reference_invalid", "style_not_found"})


def status_path(job_id: str) -> str:
    return f"/api/illustrations/{job_id}"


def _model_name(model: dict[str, Any] | None) -> str:
    if not model:
        return "unknown"
    parts = [str(model.get("base") or model.get("profile") or "unknown")]
    parts += [str(model[key]) for key in ("ip_adapter", "style_lora") if model.get(key)]
    return "+".join(parts)


def _answer(job: Job) -> tuple[Response, int, dict[str, str]]:
    """The AutoBio-shaped answer for a job as it is now."""
    headers = {"Location": status_path(job.id)}
    if job.status == JobStatus.SUCCEEDED.value and job.images:
        timings = job.timings or {}
        params = StoredRequest.model_validate(job.request).params
        result = GenerateResult(
            image_url=f"{base_url()}{job_path(job.id)}/images/0",
            generation_id=job.id,
            metadata=ResultMetadata(model=_model_name(job.model), parameters=params.model_dump(mode="json"),
                                    generation_time=float(timings.get("inference_s") or timings.get("total_s") or 0)),
        )
        return jsonify(result.model_dump(mode="json", by_alias=True)), 200, headers
    if job.status in (JobStatus.QUEUED.value, JobStatus.RUNNING.value):
        pending = GeneratePending(generation_id=job.id, status=job.status,
                                  status_url=status_path(job.id))
        return jsonify(pending.model_dump(mode="json", by_alias=True)), 202, headers
    code = job.error_code or "internal"
    detail = f"generation {job.id} ended {job.status} ({code}): {job.error_message or ''}".strip()
    if job.status == JobStatus.CANCELED.value:
        raise ApiError(409, "Conflict", detail, code=ProblemCode.GENERATION_CANCELED)
    if code in INPUT_ERRORS:
        raise ApiError(422, "Unprocessable Content", detail, [("subjectReferences", code)])
    raise ApiError(503, "Service Unavailable", detail,
                   headers={"Retry-After": str(services().settings.retry_after_s)})


def _translate(body: GenerateRequest) -> IllustrationRequest:
    try:
        return IllustrationRequest.model_validate_json(json.dumps(to_v1(body)))
    except ValidationError as exc:
        raise validation_error([problem_field(error).model_copy(update={"field": v1_field(problem_field(error).field)})
                                for error in fields_of(exc)]) from None


def _wait_s(svc: Services) -> float:
    preferred = prefer_wait(request.headers.get("Prefer"), svc.settings.prefer_wait_max_s)
    return preferred if preferred is not None else min(svc.settings.compat_wait_s, svc.settings.prefer_wait_max_s)


def _accepted(rows: list[Job]) -> submit.Answer:
    """What a retry with the same Idempotency-Key gets: the generation as accepted, and it follows statusUrl from
    there (never a second job)."""
    (job,) = rows
    pending = GeneratePending(generation_id=job.id, status=job.status, status_url=status_path(job.id))
    return submit.Answer(pending.model_dump(mode="json", by_alias=True), {"Location": status_path(job.id)})


def _read(svc: Services, job_id: str) -> tuple[Response, int, dict[str, str]]:
    with svc.db.begin() as session:
        return _answer(owned_job(session, job_id, None))


@bp.post("/generate")
@require("generate")
@operation(
    "AutoBio's generate call (waits for the image)", tags=["autobio"], body=GenerateRequest,
    headers=[PREFER, IDEMPOTENCY_KEY],
    responses={200: Returns("The image is ready.", GenerateResult, headers=("Location",)),
               202: Returns("Not ready within the wait: poll statusUrl.", GeneratePending, headers=("Location",))},
    errors=(409, 422, 503),
)
@idempotent
def generate() -> tuple[Response, int, dict[str, str]]:
    body = _translate(json_body(GenerateRequest))
    svc = services()
    try:
        created = submit.create(svc, current_principal(), [body], _accepted)
    except ApiError as exc:
        exc.errors = [error.model_copy(update={"field": v1_field(error.field)}) for error in exc.errors]
        raise
    submit.mark(svc, created.published)
    job_id = created.jobs[0].id
    wait_for(svc, job_id, _wait_s(svc))
    return _read(svc, job_id)


@bp.get("/<generation_id>")
@require("generate")
@operation(
    "AutoBio's status call", tags=["autobio"], headers=[PREFER],
    responses={200: Returns("The image is ready.", GenerateResult, headers=("Location",)),
               202: Returns("Still queued or running.", GeneratePending, headers=("Location",))},
    errors=(404, 409, 422, 503),
)
def status(generation_id: str) -> tuple[Response, int, dict[str, str]]:
    svc = services()
    with svc.db.begin() as session:
        owned_job(session, generation_id, None)
    preferred = prefer_wait(request.headers.get("Prefer"), svc.settings.prefer_wait_max_s)
    if preferred:
        wait_for(svc, generation_id, preferred)
    return _read(svc, generation_id)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
