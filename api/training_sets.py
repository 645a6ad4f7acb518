"""The pictures of a training set as ``POST /v1/styles`` receives them: uploads checked from their headers and stored
as sent, pictures named by URL, subject or illustration checked now and copied into storage by the preparation step,
which decodes and normalises every picture (CPU worker): an upload costs the API no decoding, however many pixels its
few bytes claim (their sum is held to ``limits.TRAINING_SET_MAX_PIXELS`` before anything is stored).

Each picture records the user it came from: a subject's or an illustration's owner, else the request's ``user_id``
(if any). Errors name the field (``image.3``, ``images.2.subject_id``) and never repeat a caption or a URL.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.datastructures import FileStorage

from api.errors import FieldError
from shared import limits
from shared.fetch import FetchBlocked, check_url
from shared.images import ImageRejected, inspect
from shared.models import Job, JobImage, Subject, TrainingImage
from shared.schemas import TrainingImageRef
from shared.states import JobStatus
from shared.storage import Storage
from shared.subjects import latest_version
from shared.training import image_key

SOURCE_UPLOAD, SOURCE_URL, SOURCE_SUBJECT, SOURCE_ILLUSTRATION = "upload", "url", "subject", "illustration"


@dataclass(frozen=True)
class Picture:
    """One picture of the set before it has a row: an upload (its bytes as sent, with their content type) or a
    reference for the preparation step."""

    source: str
    caption: str
    user_id: str | None
    upload: bytes | None = None
    content_type: str | None = None
    source_ref: str | None = None


def uploads(files: list[FileStorage], captions: list[str], user_id: str | None,
            errors: list[FieldError]) -> list[Picture]:
    """Multipart ``image`` files, each checked from its header (format, bytes, pixels: nothing is decoded) and kept
    as sent; errors name ``image.<i>``, or ``image`` for the set's pixels in all."""
    pictures, pixels = [], 0
    for index, (upload, caption) in enumerate(zip(files, captions, strict=True)):
        data = upload.read()
        try:
            header = inspect(data)
        except ImageRejected as exc:
            errors.append((f"image.{index}", str(exc)))
            continue
        pixels += header.pixels
        pictures.append(Picture(SOURCE_UPLOAD, caption, user_id, upload=data, content_type=header.content_type))
    if pixels > limits.TRAINING_SET_MAX_PIXELS:
        errors.append(("image", f"the pictures have {pixels} pixels in all; a training set takes at most "
                                f"{limits.TRAINING_SET_MAX_PIXELS}"))
    return pictures


def references(session: Session, client_id: str, refs: list[TrainingImageRef], captions: list[str],
               user_id: str | None, allowlist: list[str], errors: list[FieldError]) -> list[Picture]:
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
    """The set's rows, in order; uploads are stored now, as sent, where the preparation step will put them normalised
    (under the version, in the caller's transaction). ``sha256`` stays unset until then."""
    rows = []
    for index, picture in enumerate(pictures):
        row = TrainingImage(style_id=style_id, version=version, index=index, source=picture.source,
                            source_ref=picture.source_ref, user_id=picture.user_id, caption=picture.caption)
        if picture.upload is not None:
            row.storage_key = image_key(style_id, version, index)
            storage.put(row.storage_key, picture.upload, picture.content_type or "application/octet-stream")
        rows.append(row)
    session.add_all(rows)
    session.flush()
    return rows
