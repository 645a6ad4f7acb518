"""Shaping rows into the contract's JSON (field names exactly as ``docs/api.md``); the pure part is
``shared.views`` (webhook bodies use it too)."""

from __future__ import annotations

from flask import request

from api.services import services
from shared import views
from shared.faces import face_warnings
from shared.models import Job, Subject, SubjectVersion
from shared.schemas import FaceOut, JobOut, SubjectOut
from shared.views import job_path

__all__ = ["absolute", "base_url", "job_out", "job_path", "subject_out"]


def base_url() -> str:
    """The base of absolute URLs in answers: ``ILLUSTRATIONS_PUBLIC_BASE_URL``, else the request's own host."""
    configured = services().settings.public_base_url
    return (configured or request.host_url).rstrip("/")


def absolute(path: str) -> str:
    """``/v1/...`` as an absolute URL (``links`` in answers)."""
    return base_url() + path


def job_out(job: Job, queue_position: int | None = None) -> JobOut:
    return views.job_out(job, base_url(), queue_position)


def subject_out(subject: Subject, version: SubjectVersion) -> SubjectOut:
    return SubjectOut(
        id=subject.id,
        user_id=subject.user_id,
        name=subject.name,
        version=version.version,
        width=version.width,
        height=version.height,
        sha256=version.sha256,
        face=FaceOut(box=version.face_box) if version.face_box is not None else None,
        warnings=face_warnings(version.face_count),
        created_at=version.created_at,
    )
