"""The generation engine's parts of a user deletion: reference embeddings, generation metrics rows, feedback.

Embeddings are stored by image content (``embeddings/<sha256>/...``, see ``worker.embeddings``): the user's are
those of their subject photos and of their jobs' references; an image another user still has as a subject keeps
its embeddings. This part runs before ``jobs`` and ``subjects``, whose rows name the images.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.deletion import part
from shared.models import Feedback, GenerationMetric, Job, Subject, SubjectVersion
from shared.storage import Storage
from shared.stored_request import RequestOutline, StoredRef


def embedding_prefix(sha256: str) -> str:
    """Every stored embedding of one image (the same layout as ``worker.embeddings.embedding_prefix``)."""
    return f"embeddings/{sha256}/"


def _job_reference_hashes(request: dict[str, Any]) -> set[str]:
    """The images a job's references name (a reference still given by URL names none yet)."""
    refs = RequestOutline.model_validate(request).resolved.references
    return {ref.sha256 for ref in refs if isinstance(ref, StoredRef)}


@part("embeddings", order=5)
def delete_embeddings(session: Session, storage: Storage, client_id: str, user_id: str) -> int:
    own = set(session.execute(
        select(SubjectVersion.sha256).join(Subject, Subject.id == SubjectVersion.subject_id)
        .where(Subject.client_id == client_id, Subject.user_id == user_id)
    ).scalars())
    for request in session.execute(
        select(Job.request).where(Job.client_id == client_id, Job.user_id == user_id)
    ).scalars():
        own |= _job_reference_hashes(request)
    if not own:
        return 0
    kept = set(session.execute(
        select(SubjectVersion.sha256).join(Subject, Subject.id == SubjectVersion.subject_id)
        .where(SubjectVersion.sha256.in_(own), (Subject.client_id != client_id) | (Subject.user_id != user_id))
    ).scalars())
    removed = 0
    for sha256 in sorted(own - kept):
        removed += storage.delete_prefix(embedding_prefix(sha256))
    return removed


@part("metrics", order=30)
def delete_metrics(session: Session, storage: Storage, client_id: str, user_id: str) -> int:
    result = session.execute(
        delete(GenerationMetric).where(GenerationMetric.client_id == client_id, GenerationMetric.user_id == user_id)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


@part("feedback", order=30)
def delete_feedback(session: Session, storage: Storage, client_id: str, user_id: str) -> int:
    """The user's ratings and comments of their illustrations (``POST /v1/illustrations/{id}/feedback``)."""
    result = session.execute(delete(Feedback).where(Feedback.client_id == client_id, Feedback.user_id == user_id))
    return int(result.rowcount)  # type: ignore[attr-defined]
