"""The ``subjects`` part of a user deletion: subjects, their versions and their photos."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.deletion import part
from shared.models import Subject, SubjectVersion
from shared.storage import Storage


def subject_prefix(subject_id: str) -> str:
    return f"subjects/{subject_id}/"


def delete_subject(session: Session, storage: Storage, subject_id: str) -> None:
    """One subject: its photos first, then its rows (``DELETE /v1/subjects/{id}`` uses it too)."""
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
