"""The ``jobs`` part of a user deletion: job rows, their images (reference-counted), fetched style references."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.deletion import part
from shared.models import Job, JobImage
from shared.storage import Storage

CHUNK = 500


def reference_prefix(job_id: str) -> str:
    """Where the preparation step stores a job's fetched style reference (``jobs/{id}/references/``)."""
    return f"jobs/{job_id}/references/"


@part("jobs", order=10)
def delete_jobs(session: Session, storage: Storage, client_id: str, user_id: str) -> int:
    job_ids = list(session.execute(
        select(Job.id).where(Job.client_id == client_id, Job.user_id == user_id)
    ).scalars())
    for start in range(0, len(job_ids), CHUNK):
        chunk = job_ids[start:start + CHUNK]
        keys = set(session.execute(
            select(JobImage.storage_key).where(JobImage.job_id.in_(chunk)).distinct()
        ).scalars())
        # An object another job still lists (a cache hit shares the images of the job it copied) stays.
        kept = set(session.execute(
            select(JobImage.storage_key)
            .where(JobImage.storage_key.in_(keys), JobImage.job_id.not_in(job_ids))
            .distinct()
        ).scalars()) if keys else set()
        for key in sorted(keys - kept):
            storage.delete(key)
        for job_id in chunk:
            storage.delete_prefix(reference_prefix(job_id))
        session.execute(delete(JobImage).where(JobImage.job_id.in_(chunk)))
        session.execute(delete(Job).where(Job.id.in_(chunk)))
    return len(job_ids)
