"""The pictures of a training set as ``POST /v1/styles`` receives them: uploads checked and normalised now, pictures
named by URL, subject or illustration checked now and copied into storage by the preparation step.

Each picture records the user it came from: a subject's or an illustration's owner, else the request's ``user_id``
(if any). Errors name the field (``image.3``, ``images.2.subject_id``) and never repeat a caption or a URL.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage

from shared.fetch import FetchBlocked, check_url
from shared.images import ImageRejected, NormalisedImage, normalise
from shared.models import Job, JobImage, Subject, TrainingImage
from shared.schemas import TrainingImageRef
from shared.states import JobStatus
from shared.storage import Storage
from shared.subjects import latest_version
from shared.training import image_key

SOURCE_UPLOAD, SOURCE_URL, SOURCE_SUBJECT, SOURCE_ILLUSTRATION = "upload", "url", "subject", "illustration"


@dataclass(frozen=True)
class Picture:
    """One picture of the set before it has a row: an upload (``image``) or a reference for the preparation step."""

    source: str
    caption: str
    user_id: str | None
    image: NormalisedImage | None = None
    source_ref: str | None = None

    @property
    def needs_preparation(self) -> bool:
        return self.image is None


def uploads(files: list[FileStorage], captions: list[str], user_id: str | None,
            errors: list[tuple[str, str]]) -> list[Picture]:
    """Multipart ``image`` files, each checked (format, bytes, pixels) and normalised; errors name ``image.<i>``."""
    pictures = []
    for index, (upload, caption) in enumerate(zip(files, captions, strict=True)):
        try:
            image = normalise(upload.read())
        except ImageRejected as exc:
            errors.append((f"image.{index}", str(exc)))
            continue
        pictures.append(Picture(SOURCE_UPLOAD, caption, user_id, image=image))
    return pictures


def references(session: Session, client_id: str, refs: list[TrainingImageRef], captions: list[str],
               user_id: str | None, allowlist: list[str], errors: list[tuple[str, str]]) -> list[Picture]:
    """JSON ``images``: URLs checked (fetched later), subjects and illustrations of this client looked up now."""
    pictures = []
    for index, (ref, caption) in enumerate(zip(refs, captions, strict=True)):
        field = f"images.{index}"
        if ref.image_url is not None:
            try:
                check_url(ref.image_url, allowlist)
            except FetchBlocked as exc:
                errors.append((f"{field}.image_url", str(exc)))
                continue
            pictures.append(Picture(SOURCE_URL, caption, user_id, source_ref=ref.image_url))
        elif ref.subject_id is not None:
            subject = session.execute(
                select(Subject).where(Subject.id == ref.subject_id, Subject.client_id == client_id)
            ).scalar_one_or_none()
            if subject is None or latest_version(session, subject.id) is None:
                errors.append((f"{field}.subject_id", "no such subject"))
                continue
            pictures.append(Picture(SOURCE_SUBJECT, caption, subject.user_id, source_ref=subject.id))
        else:
            assert ref.illustration_id is not None and ref.index is not None
            owner = session.execute(
                select(Job.user_id).join(JobImage, JobImage.job_id == Job.id)
                .where(Job.id == ref.illustration_id, Job.client_id == client_id,
                       Job.status == JobStatus.SUCCEEDED.value, JobImage.index == ref.index)
            ).scalar_one_or_none()
            if owner is None:
                errors.append((f"{field}.illustration_id", "no finished illustration with an image at this index"))
                continue
            pictures.append(Picture(SOURCE_ILLUSTRATION, caption, owner,
                                    source_ref=f"{ref.illustration_id}/{ref.index}"))
    return pictures


def add_pictures(session: Session, storage: Storage, style_id: str, version: int,
                 pictures: list[Picture]) -> list[TrainingImage]:
    """The set's rows, in order; uploads are stored now (under the version, in the caller's transaction)."""
    rows = []
    for index, picture in enumerate(pictures):
        row = TrainingImage(style_id=style_id, version=version, index=index, source=picture.source,
                            source_ref=picture.source_ref, user_id=picture.user_id, caption=picture.caption)
        if picture.image is not None:
            key = image_key(style_id, version, index)
            storage.put(key, picture.image.png, "image/png")
            row.storage_key, row.sha256 = key, picture.image.sha256
            row.width, row.height = picture.image.width, picture.image.height
        rows.append(row)
    session.add_all(rows)
    session.flush()
    return rows
