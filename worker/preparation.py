"""The preparation step (CPU): fetch a job's URL references with the safe fetcher, store them, hand it to a GPU.

A job whose request names a photo by URL is accepted onto ``illustrations.prepare`` (its row's ``queue``). Here:

1. Read the job (only a queued job still on the prepare queue is prepared; anything else is dropped).
2. Fetch each URL reference (``shared.fetch``: public addresses only, size and time caps) and check it as an input
   image (``shared.images``). A subject's photo becomes a new version of the user's subject of that name; a style
   reference is kept under the job (``jobs/{id}/references/style.png``).
3. A reference that cannot be used fails the job (``reference_unreachable`` / ``reference_blocked`` /
   ``reference_invalid``), unless ``on_subject_error`` is ``text_only``: then that subject is left out and
   ``warnings`` says so (by position, never by URL).
4. Move the job to its GPU queue with every reference resolved to storage (fenced: a job canceled meanwhile stays
   canceled), then publish it. GPU workers read references from storage only: they never touch the network.
"""

from __future__ import annotations

import logging

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from shared import jobs, tasks
from shared.db import Database
from shared.deletion.jobs import reference_prefix
from shared.errors import ErrorCode, JobFailure
from shared.fetch import Fetcher, FetchError
from shared.images import ImageRejected, NormalisedImage, normalise
from shared.models import Job
from shared.queue import Publisher
from shared.states import JobStatus
from shared.storage import Storage
from shared.stored_request import StoredRef, StoredRequest, UrlRef
from shared.subjects import reference, store_version

log = logging.getLogger(__name__)


def _fetch_image(fetcher: Fetcher, url: str, field: str) -> NormalisedImage:
    try:
        return normalise(fetcher.get(url).data)
    except FetchError as exc:
        raise JobFailure(exc.code, f"{field}: {exc}") from None
    except ImageRejected as exc:
        raise JobFailure(ErrorCode.REFERENCE_INVALID, f"{field}: {exc}") from None


def _store_subject(db: Database, storage: Storage, job: Job, name: str, image: NormalisedImage) -> StoredRef:
    for _ in range(2):  # a concurrent first upload of the same name: the second try finds it
        try:
            with db.begin() as session:
                stored = store_version(session, storage, job.client_id, job.user_id, name, image)
                return reference(stored.subject, stored.version)
        except IntegrityError:
            continue
    raise JobFailure(ErrorCode.INTERNAL, "the subject could not be stored", transient=True)


def _resolve(db: Database, storage: Storage, fetcher: Fetcher, job: Job,
             warnings: list[str]) -> StoredRequest:
    try:
        request = StoredRequest.model_validate(job.request)
    except ValidationError:
        raise JobFailure(ErrorCode.INTERNAL, "the job's stored request cannot be read") from None
    resolved = request.resolved
    identity: list[StoredRef | UrlRef] = []
    for ref in resolved.identity:
        if isinstance(ref, StoredRef):
            identity.append(ref)
            continue
        field = f"subjects.{ref.index}"
        if ref.name is None:
            raise JobFailure(ErrorCode.INTERNAL, f"{field}: a photo by URL names no subject")
        try:
            image = _fetch_image(fetcher, ref.image_url, field)
        except JobFailure as exc:
            if request.on_subject_error != "text_only":
                raise
            warnings.append(f"{field} left out ({exc.code.value}): {exc.message.removeprefix(field + ': ')}")
            continue
        identity.append(_store_subject(db, storage, job, ref.name, image))
    style = resolved.style
    if isinstance(style, UrlRef):
        image = _fetch_image(fetcher, style.image_url, "style.reference")
        key = reference_prefix(job.id) + "style.png"
        storage.put(key, image.png, "image/png")
        style = StoredRef(storage_key=key, sha256=image.sha256)
    return request.model_copy(update={"resolved": resolved.model_copy(update={"identity": identity, "style": style})})


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
    # 2-3. Fetch, check and store each URL reference.
    try:
        request = _resolve(db, storage, fetcher, job, warnings)
    except JobFailure as exc:
        if exc.transient:
            raise
        with db.begin() as session:
            jobs.preparation_failed(session, job_id, tasks.QUEUE_PREPARE, exc.code, exc.message)
        log.info("job %s: preparation failed (%s)", job_id, exc.code.value)
        return f"failed:{exc.code.value}"
    # 4. Hand it to its GPU queue, then publish (the relay publishes it if this publish fails).
    gpu_queue = tasks.QUEUE_BY_PRIORITY[job.priority]
    with db.begin() as session:
        if not jobs.prepared(session, job_id, tasks.QUEUE_PREPARE, gpu_queue, request.model_dump(mode="json"),
                             warnings):
            return "skipped"  # canceled (or deleted) while it was being prepared
    if publisher.publish(job_id, gpu_queue):
        with db.begin() as session:
            jobs.mark_published(session, job_id)
    log.info("job %s prepared for %s", job_id, gpu_queue)
    return "prepared"
