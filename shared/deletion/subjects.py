"""The ``subjects`` part of a user deletion: subjects, their versions, their photos and the embeddings of those.

Embeddings are kept by image content, not by subject (``embeddings/<sha256>/...``, ``worker.embeddings``): one
computed from a photo serves every subject, of any user or client, that has the same image. Deleting a subject
removes the embeddings of each of its photos unless another subject still has that image (theirs are then the
other subject's as much as this one's; nothing in them says whose they were). The prefix covers every encoder
revision and every variant keyed below the image (a face crop, say).
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.deletion import part
from shared.deletion.engine import embedding_prefix
from shared.models import Subject, SubjectVersion
from shared.storage import Storage


def subject_prefix(subject_id: str) -> str:
    return f"subjects/{subject_id}/"


def delete_subject(session: Session, storage: Storage, subject_id: str) -> None:
    """One subject: its photos and their embeddings first, then its rows (``DELETE /v1/subjects/{id}`` uses it)."""
    images = set(session.execute(
        select(SubjectVersion.sha256).where(SubjectVersion.subject_id == subject_id)
    ).scalars())
    kept = set(session.execute(
        select(SubjectVersion.sha256).where(SubjectVersion.sha256.in_(images), SubjectVersion.subject_id != subject_id)
    ).scalars()) if images else set()
    for sha256 in sorted(images - kept):
        storage.delete_prefix(embedding_prefix(sha256))
    storage.delete_prefix(subject_prefix(subject_id))
    session.execute(delete(SubjectVersion).where(SubjectVersion.subject_id == subject_id))
    session.execute(delete(Subject).where(Subject.id == subject_id))


@part("subjects", order=20)
def delete_subjects(session: Session, storage: Storage, client_id: str, user_id: str) -> int:
    subject_ids = list(session.execute(
        select(Subject.id).where(Subject.client_id == client_id, Subject.user_id == user_id)
    ).scalars())
    for subject_id in subject_ids:
        delete_subject(session, storage, subject_id)
    return len(subject_ids)
