"""Shaping rows into the contract's JSON without Flask: the API's views and the webhook bodies use the same code.

``base`` is the absolute base of image URLs and ``links`` (the API: ``public_base_url``, else the request's host; a
worker rendering a webhook: ``Settings.effective_public_base_url``, which in the embedded mode is the API's own
address and elsewhere must be set).
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from shared import regions
from shared.models import Job, StyleVersion
from shared.schemas import ImageOut, JobErrorOut, JobOut, LayoutOut, Progress, StyleVersionOut, Timings
from shared.stored_request import RequestOutline, StoredRef


def job_path(job_id: str) -> str:
    return f"/v1/illustrations/{job_id}"


def layout_out(request: Any) -> list[LayoutOut]:
    """The job's people in the order given: where each went and whether their face was found."""
    try:
        resolved = RequestOutline.model_validate(request or {}).resolved
    except ValidationError:
        return []
    identity = resolved.identity
    try:
        used = regions.layout_regions(resolved.given_regions())
    except ValueError:  # not written by this API (a mix is refused at submit)
        return []
    return [
        LayoutOut(subject_id=ref.subject_id if isinstance(ref, StoredRef) else None, name=ref.name,
                  region=list(region), face_found=ref.face_found if isinstance(ref, StoredRef) else None)
        for ref, region in zip(identity, used, strict=True)
    ]


def job_out(job: Job, base: str, queue_position: int | None = None) -> JobOut:
    """The job as ``GET /v1/illustrations/{id}`` returns it."""
    progress = None
    if job.progress_total:
        progress = Progress(step=job.progress_step or 0, total=job.progress_total)
    error = None
    if job.error_code:
        error = JobErrorOut(code=job.error_code, message=job.error_message or "")
    return JobOut(
        id=job.id,
        status=job.status,
        user_id=job.user_id,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        progress=progress,
        queue_position=queue_position,
        attempts=job.attempt,
        images=[
            ImageOut(
                url=f"{base}{job_path(job.id)}/images/{image.index}",
                width=image.width,
                height=image.height,
                content_type=image.content_type,
                sha256=image.sha256,
            )
            for image in job.images
        ],
        seed=job.seed,
        prompt_used=job.prompt_used,
        warnings=list(job.warnings or []),
        error=error,
        timings=Timings(**job.timings) if job.timings else None,
        model=job.model,
        cached=job.cached,
        metadata=job.meta,
        priority=job.priority,
        links={"self": f"{base}{job_path(job.id)}"},
        layout=layout_out(job.request),
    )


def style_version_out(row: StyleVersion, images: int) -> StyleVersionOut:
    """One version as ``GET /v1/styles/{name}`` lists it (``images``: pictures in its training set)."""
    progress = None
    if row.progress_total:
        progress = Progress(step=row.progress_step or 0, total=row.progress_total)
    error = JobErrorOut(code=row.error_code, message=row.error_message or "") if row.error_code else None
    return StyleVersionOut(
        version=row.version, status=row.status, source=row.source, progress=progress, loss=row.loss, error=error,
        created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at, params=row.params,
        job_id=row.job_id, attempts=row.attempt, rank=row.rank, alpha=row.alpha, base_profile=row.base_profile,
        images=images, training_data_deleted_at=row.training_data_deleted_at,
    )
