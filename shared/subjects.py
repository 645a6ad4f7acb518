"""Subjects and their versions: storing a photo as a new version (uploads, fetched URLs, the preparation step).

A subject is (client, user, name); each different photo under the name is a new version (``if_exists="replace"``,
the default), the same photo again is the current version, and ``if_exists="error"`` refuses an existing name. Each
version keeps the face found in its photo (``shared.faces``; the caller normalises with ``find_face=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from shared import faces
from shared.errors import IllustrationsError
from shared.images import NormalisedImage
from shared.models import Subject, SubjectVersion
from shared.storage import Storage
from shared.stored_request import Resolved, StoredRef


class SubjectExists(IllustrationsError):
    """``if_exists="error"`` and the name is taken."""


@dataclass(frozen=True)
class StoredVersion:
    subject: Subject
    version: SubjectVersion
    created: bool  # False: the same photo was already the current version


def latest_version(session: Session, subject_id: str) -> SubjectVersion | None:
    return session.execute(
        select(SubjectVersion)
        .where(SubjectVersion.subject_id == subject_id)
        .order_by(SubjectVersion.version.desc())
        .limit(1)
    ).scalar_one_or_none()


def version_key(subject_id: str, number: int) -> str:
    return f"subjects/{subject_id}/v{number}.png"


def store_version(session: Session, storage: Storage, client_id: str, user_id: str, name: str,
                  image: NormalisedImage, if_exists: Literal["replace", "error"] = "replace") -> StoredVersion:
    """Add ``image`` as the newest version of the user's subject ``name`` (creating the subject if absent).

    Two writers adding the first version of the same new name at once: one of them gets an ``IntegrityError`` from
    the unique constraint when its transaction flushes (before it stores anything); the caller answers 409 or
    retries. Writers adding to an existing subject take turns (its row is locked until the transaction ends), so
    none stores its photo under a version number another one is taking.
    """
    subject = session.execute(
        select(Subject).where(Subject.client_id == client_id, Subject.user_id == user_id, Subject.name == name)
        .with_for_update()
    ).scalar_one_or_none()
    current = None
    if subject is None:
        subject = Subject(client_id=client_id, user_id=user_id, name=name)
        session.add(subject)
        session.flush()
    else:
        if if_exists == "error":
            raise SubjectExists("a subject with this name exists for this user")
        current = latest_version(session, subject.id)
    if current is not None and current.sha256 == image.sha256:
        if current.face_detector is None and image.face is not None:  # stored before faces were detected
            _set_face(current, image.face)
        return StoredVersion(subject, current, created=False)
    number = session.execute(
        select(func.coalesce(func.max(SubjectVersion.version), 0)).where(SubjectVersion.subject_id == subject.id)
    ).scalar_one() + 1
    key = version_key(subject.id, number)
    storage.put(key, image.png, "image/png")
    version = SubjectVersion(subject_id=subject.id, version=number, storage_key=key, sha256=image.sha256,
                             width=image.width, height=image.height)
    if image.face is not None:
        _set_face(version, image.face)
    session.add(version)
    session.flush()
    session.refresh(version)
    return StoredVersion(subject, version, created=True)


def _set_face(version: SubjectVersion, face: faces.FaceDetection) -> None:
    version.face_box = list(face.box) if face.box is not None else None
    version.face_count = face.count
    version.face_detector = face.detector


def record_face(session: Session, subject_id: str, version: int, face: faces.FaceDetection) -> None:
    """Record the face found in a version stored before faces were detected (unless one was recorded meanwhile)."""
    session.execute(
        update(SubjectVersion)
        .where(SubjectVersion.subject_id == subject_id, SubjectVersion.version == version,
               SubjectVersion.face_detector.is_(None))
        .values(face_box=list(face.box) if face.box is not None else None, face_count=face.count,
                face_detector=face.detector)
    )


def reference(subject: Subject, version: SubjectVersion, region: list[float] | None = None) -> StoredRef:
    """What a job's ``request.resolved`` keeps of a subject: enough for a GPU worker to read it from storage and
    crop its face, and where the person goes (``region``, as asked)."""
    return StoredRef(subject_id=subject.id, name=subject.name, version=version.version,
                     storage_key=version.storage_key, sha256=version.sha256, face=version.face_box,
                     face_count=version.face_count, detector=version.face_detector, region=region)


def face_warnings(resolved: Resolved) -> list[str]:
    """A job's warnings about its people's photos (no face found, several faces), by position."""
    return [f"subjects.{i}: {warning}" for i, ref in enumerate(resolved.identity) if isinstance(ref, StoredRef)
            for warning in faces.face_warnings(ref.face_count)]
