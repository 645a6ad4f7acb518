"""Shaping rows into the contract's JSON (field names exactly as ``api-contract.md``)."""

from __future__ import annotations

from flask import request

from api.services import services
from shared.models import Job, Subject, SubjectVersion
from shared.schemas import ImageOut, JobErrorOut, JobOut, Progress, SubjectOut, Timings


def base_url() -> str:
    configured = services().settings.public_base_url
    return (configured or request.host_url).rstrip("/")


def job_path(job_id: str) -> str:
    return f"/v1/illustrations/{job_id}"


def job_out(job: Job, queue_position: int | None = None) -> JobOut:
    base = base_url()
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
        links={"self": job_path(job.id)},
    )


def subject_out(subject: Subject, version: SubjectVersion) -> SubjectOut:
    return SubjectOut(
        id=subject.id,
        user_id=subject.user_id,
        name=subject.name,
        version=version.version,
        width=version.width,
        height=version.height,
        sha256=version.sha256,
        created_at=version.created_at,
    )
