"""The preparation step (CPU): fetch a job's URL references with the safe fetcher, store them, hand it to a GPU.

A job whose request names a photo by URL, or a subject photo stored before faces were detected, is accepted onto
``illustrations.prepare`` (its row's ``queue``). Here:

1. Read the job (only a queued job still on the prepare queue is prepared; anything else is dropped).
2. Fetch each URL reference (``shared.fetch``: public addresses only, size and time caps) and check it as an input
   image (``shared.images``); a subject's photo goes through the face detector (``shared.faces``: a warning when it
   finds none, or several). Nothing is stored yet: a fetch may take seconds, and the user may be deleted meanwhile.
   A stored subject photo from before faces were detected is looked at too, and its face recorded with its version.
3. A reference that cannot be used fails the job (``reference_unreachable`` / ``reference_blocked`` /
   ``reference_invalid``), unless ``on_subject_error`` is ``text_only``: then that subject is left out and
   ``warnings`` says so (by position, never by URL).
4. In one transaction, under the user's deletion lock (``shared.deletion.lock_user``, shared, as submissions take
   it) and with the job's row locked: check the job is still queued for preparation and no deletion of its user is
   in progress (one is: the job is canceled ``user_deleted``, nothing is stored); store each subject photo as a new
   version of the user's subject of that name (keeping the person's region) and the style reference under the job
   (``jobs/{id}/references/style.png``); move the job to its GPU queue with every reference resolved to storage
   (``shared.jobs.prepared``, the fence). If the fence refuses or anything fails, the objects it wrote are deleted
   and the transaction rolls back: a user deletion that began meanwhile finds either everything (and deletes it)
   or nothing. Then publish. GPU workers read references from storage only: they never touch the network.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import PIL.Image
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from shared import faces, jobs, tasks
from shared.db import Database
from shared.deletion import in_progress, lock_user
from shared.deletion.jobs import reference_prefix
from shared.errors import CancelReason, ErrorCode, JobFailure
from shared.fetch import Fetcher, FetchError
from shared.images import ImageRejected, NormalisedImage, normalise
from shared.models import Job
from shared.queue import Publisher
from shared.states import JobStatus
from shared.storage import ObjectNotFound, Storage, StorageError
from shared.stored_request import StoredRef, StoredRequest, UrlRef
from shared.subjects import record_face, reference, store_version

log = logging.getLogger(__name__)


def _fetch_image(fetcher: Fetcher, url: str, field: str, *, find_face: bool = False) -> NormalisedImage:
    try:
        return normalise(fetcher.get(url).data, find_face=find_face)
    except FetchError as exc:
        raise JobFailure(exc.code, f"{field}: {exc}") from None
    except ImageRejected as exc:
        raise JobFailure(ErrorCode.REFERENCE_INVALID, f"{field}: {exc}") from None


@dataclass(frozen=True)
class _Fetched:
    """Step 2's result: the request, and each reference as stored already or as a fetched image to store."""

    request: StoredRequest
    identity: list[StoredRef | tuple[UrlRef, NormalisedImage]]  # (reference, photo) for a subject given by URL
    style: StoredRef | NormalisedImage | None


class _Refused(Exception):
    """The fence refused the prepared job after something was written: roll back, delete the objects."""


def _find_face(db: Database, storage: Storage, ref: StoredRef, field: str, warnings: list[str]) -> StoredRef:
    """A stored photo from before faces were detected: look now, and record it with its subject version (later jobs
    with that version need no preparation)."""
    try:
        with PIL.Image.open(io.BytesIO(storage.get(ref.storage_key)), formats=["PNG"]) as image:
            found = faces.detect(image)
    except ObjectNotFound:
        raise JobFailure(ErrorCode.REFERENCE_INVALID, f"{field}: the photo is no longer stored") from None
    except (OSError, SyntaxError, ValueError):
        raise JobFailure(ErrorCode.REFERENCE_INVALID, f"{field}: the stored photo cannot be decoded") from None
    if ref.subject_id is not None and ref.version is not None:
        with db.begin() as session:
            record_face(session, ref.subject_id, ref.version, found)
    warnings.extend(f"{field}: {warning}" for warning in found.warnings)
    return ref.model_copy(update={"face": list(found.box) if found.box is not None else None,
                                  "face_count": found.count, "detector": found.detector})


def _fetch(db: Database, storage: Storage, fetcher: Fetcher, job: Job, warnings: list[str]) -> _Fetched:
    try:
        request = StoredRequest.model_validate(job.request)
    except ValidationError:
        raise JobFailure(ErrorCode.INTERNAL, "the job's stored request cannot be read") from None
    resolved = request.resolved
    identity: list[StoredRef | tuple[UrlRef, NormalisedImage]] = []
    for position, ref in enumerate(resolved.identity):
        if isinstance(ref, StoredRef):
            identity.append(ref if ref.detector is not None else
                            _find_face(db, storage, ref, f"subjects.{position}", warnings))
            continue
        field = f"subjects.{ref.index}"
        if ref.name is None:
            raise JobFailure(ErrorCode.INTERNAL, f"{field}: a photo by URL names no subject")
        try:
            image = _fetch_image(fetcher, ref.image_url, field, find_face=True)
        except JobFailure as exc:
            if request.on_subject_error != "text_only":
                raise
            warnings.append(f"{field} left out ({exc.code.value}): {exc.message.removeprefix(field + ': ')}")
            continue
        if image.face is not None:
            warnings.extend(f"{field}: {warning}" for warning in image.face.warnings)
        identity.append((ref, image))
    style: StoredRef | NormalisedImage | None = None
    if isinstance(resolved.style, UrlRef):
        style = _fetch_image(fetcher, resolved.style.image_url, "style.reference")
    elif resolved.style is not None:
        style = resolved.style
    return _Fetched(request, identity, style)


def _fence(session: Session, job: Job) -> str | None:
    """Hold the user's deletion lock and the job's row; ``None`` if the job may be prepared, else what happened."""
    lock_user(session, job.client_id, job.user_id, exclusive=False)
    still = session.execute(
        select(Job.id).where(Job.id == job.id, Job.status == JobStatus.QUEUED.value, Job.queue == tasks.QUEUE_PREPARE)
        .with_for_update()
    ).scalar_one_or_none()
    if still is None:
        return "skipped"  # canceled, or deleted with its user, while it was being fetched
    if in_progress(session, job.client_id, job.user_id) is not None:
        jobs.canceled(session, job.id, CancelReason.USER_DELETED)  # the deletion would; nothing of it is stored
        return "canceled"
    return None


def _store(session: Session, storage: Storage, job: Job, fetched: _Fetched, written: list[str]) -> StoredRequest:
    """Store the fetched images (each object's key goes into ``written`` before it is put)."""
    identity: list[StoredRef | UrlRef] = []
    for item in fetched.identity:
        if isinstance(item, StoredRef):
            identity.append(item)
            continue
        ref, image = item
        assert ref.name is not None  # checked when it was fetched
        stored = store_version(session, storage, job.client_id, job.user_id, ref.name, image)
        if stored.created:
            written.append(stored.version.storage_key)
        identity.append(reference(stored.subject, stored.version, ref.region))
    style = fetched.style
    if isinstance(style, NormalisedImage):
        key = reference_prefix(job.id) + "style.png"
        written.append(key)
        storage.put(key, style.png, "image/png")
        style = StoredRef(storage_key=key, sha256=style.sha256)
    resolved = fetched.request.resolved.model_copy(update={"identity": identity, "style": style})
    return fetched.request.model_copy(update={"resolved": resolved})


def _store_and_hand_over(db: Database, storage: Storage, job: Job, fetched: _Fetched, warnings: list[str],
                         gpu_queue: str) -> str:
    """Step 4: ``prepared``, or why not (``skipped``, ``canceled``); nothing it wrote outlives a refusal or error."""
    for _ in range(2):  # a concurrent first upload of the same subject name: the second try finds it
        written: list[str] = []
        try:
            with db.begin() as session:
                refused = _fence(session, job)
                if refused is not None:
                    return refused
                try:
                    request = _store(session, storage, job, fetched, written)
                    if not jobs.prepared(session, job.id, tasks.QUEUE_PREPARE, gpu_queue,
                                         request.model_dump(mode="json"), warnings):
                        raise _Refused
                except BaseException:
                    # Before the rollback: the subject's row is still locked by this transaction, so no other writer
                    # has put a photo under the version key being removed.
                    _undo(storage, written)
                    raise
            return "prepared"
        except _Refused:
            return "skipped"
        except IntegrityError:
            _undo(storage, written)  # (already done unless the commit itself failed)
            continue
        except BaseException:
            _undo(storage, written)
            raise
    raise JobFailure(ErrorCode.INTERNAL, "the subject could not be stored", transient=True)


def _undo(storage: Storage, written: list[str]) -> None:
    """Remove the objects a failed or refused transaction wrote (and forget them: undoing twice is a no-op)."""
    while written:
        key = written.pop()
        try:
            storage.delete(key)
        except StorageError as exc:  # the user deletion's final sweep removes a job's references
            log.warning("preparation: an object it wrote could not be removed (%s)", type(exc).__name__)


def prepare_job(db: Database, storage: Storage, fetcher: Fetcher, publisher: Publisher, job_id: str) -> str:
    """Prepare one job; returns what happened, for the worker log (never a URL or prompt)."""
    # 1. Only a queued job still waiting for preparation.
    with db.begin() as session:
        job = session.execute(
            select(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED.value,
                              Job.queue == tasks.QUEUE_PREPARE)
        ).scalar_one_or_none()
        if job is None:
            return "skipped"
        session.expunge(job)
    warnings = list(job.warnings or [])
    # 2-3. Fetch and check each URL reference (nothing stored yet).
    try:
        fetched = _fetch(db, storage, fetcher, job, warnings)
    except JobFailure as exc:
        if exc.transient:
            raise
        with db.begin() as session:
            jobs.preparation_failed(session, job_id, tasks.QUEUE_PREPARE, exc.code, exc.message)
        log.info("job %s: preparation failed (%s)", job_id, exc.code.value)
        return f"failed:{exc.code.value}"
    # 4. Store them and hand the job to its GPU queue (fenced, under the deletion lock), then publish (the relay
    # publishes it if this publish fails).
    gpu_queue = tasks.QUEUE_BY_PRIORITY[job.priority]
    outcome = _store_and_hand_over(db, storage, job, fetched, warnings, gpu_queue)
    if outcome != "prepared":
        log.info("job %s not prepared: %s", job_id, outcome)
        return outcome  # canceled (or deleted, or its user is being deleted) while it was being fetched
    if publisher.publish(job_id, gpu_queue):
        with db.begin() as session:
            jobs.mark_published(session, job_id)
    log.info("job %s prepared for %s", job_id, gpu_queue)
    return "prepared"
