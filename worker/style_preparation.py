"""The preparation step of a training (CPU worker, ``illustrations.prepare`` queue): every picture of the set is
decoded and normalised into the version's training set (uploads, which the API stored as sent, and pictures named by
URL, subject or illustration, copied in), then the version goes to the training queue. Training workers read
normalised pictures from storage only: they never touch the network, and the API never decodes an upload.

1. Read the version (only a queued one still on the prepare queue is prepared; anything else is dropped).
2. Get each picture not yet normalised (no ``sha256``): an upload from where the API stored it, a URL through the
   safe fetcher (``shared.fetch``), a subject's latest photo or an illustration's image from storage; check its
   header (format, bytes, pixels, and the set's pixels in all against ``limits.TRAINING_SET_MAX_PIXELS``) before
   decoding it, normalise it (``shared.images``: EXIF orientation applied, metadata dropped, an RGB PNG) and store it
   under the version (``styles/<style id>/<version>/images/<n>.png``; an upload is replaced there).
3. A picture that cannot be had or decoded fails the version (``reference_unreachable`` / ``reference_blocked`` /
   ``reference_invalid``, the message naming ``images.<n>``, never the URL); the active version stays as it was.
4. Record the pictures and move the version to the training queue in one transaction (fenced: a version canceled
   meanwhile stays canceled, and the pictures this step added are removed), then publish it.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update

from shared import limits, tasks, training
from shared.db import Database
from shared.errors import ErrorCode, JobFailure
from shared.fetch import Fetcher, FetchError
from shared.images import ImageRejected, NormalisedImage, inspect, normalise
from shared.models import JobImage, StyleVersion, TrainingImage
from shared.queue import Publisher
from shared.storage import ObjectNotFound, Storage
from shared.subjects import latest_version

log = logging.getLogger(__name__)


def _bytes(db: Database, storage: Storage, fetcher: Fetcher, row: TrainingImage) -> bytes:
    field = f"images.{row.index}"
    ref = row.source_ref or ""
    try:
        if row.storage_key is not None:  # an upload, as sent
            return storage.get(row.storage_key)
        if row.source == "url":
            return fetcher.get(ref).data
        with db.begin() as session:
            if row.source == "subject":
                version = latest_version(session, ref)
                key = version.storage_key if version is not None else None
            else:
                job_id, _, index = ref.partition("/")
                key = session.execute(
                    select(JobImage.storage_key).where(JobImage.job_id == job_id, JobImage.index == int(index))
                ).scalar_one_or_none()
        if key is None:
            raise JobFailure(ErrorCode.REFERENCE_INVALID, f"{field}: the {row.source} is no longer stored")
        return storage.get(key)
    except FetchError as exc:
        raise JobFailure(exc.code, f"{field}: {exc}") from None
    except ObjectNotFound:
        raise JobFailure(ErrorCode.REFERENCE_INVALID, f"{field}: the {row.source} is no longer stored") from None


def _picture(data: bytes, index: int, pixels_before: int, max_pixels: int) -> tuple[NormalisedImage, int]:
    """The picture normalised, and the set's pixels so far with it; its header is checked before any decoding."""
    try:
        pixels = pixels_before + inspect(data).pixels
        if pixels > max_pixels:
            raise JobFailure(ErrorCode.REFERENCE_INVALID,
                             f"images.{index}: the training set has more than {max_pixels} pixels in all")
        return normalise(data), pixels
    except ImageRejected as exc:
        raise JobFailure(ErrorCode.REFERENCE_INVALID, f"images.{index}: {exc}") from None


def prepare_style(db: Database, storage: Storage, fetcher: Fetcher, publisher: Publisher, job_id: str, *,
                  max_pixels: int = limits.TRAINING_SET_MAX_PIXELS) -> str:
    """Prepare one training's pictures; returns what happened, for the worker log (never a URL or caption)."""
    # 1. Only a queued version still waiting for preparation.
    with db.begin() as session:
        version = session.execute(
            select(StyleVersion).where(StyleVersion.job_id == job_id, StyleVersion.status == training.QUEUED,
                                       StyleVersion.queue == tasks.QUEUE_PREPARE)
        ).scalar_one_or_none()
        if version is None:
            return "skipped"
        style_id, number = version.style_id, version.version
        missing = list(session.execute(
            select(TrainingImage).where(TrainingImage.style_id == style_id, TrainingImage.version == number,
                                        TrainingImage.sha256.is_(None)).order_by(TrainingImage.index)
        ).scalars())
        session.expunge_all()
    # 2-3. Get, check, normalise and store each picture.
    stored: dict[int, tuple[str, NormalisedImage]] = {}
    added: list[str] = []  # keys this step created (an upload's key was the API's: it stays with the version)
    pixels = 0
    try:
        for row in missing:
            image, pixels = _picture(_bytes(db, storage, fetcher, row), row.index, pixels, max_pixels)
            key = training.image_key(style_id, number, row.index)
            storage.put(key, image.png, "image/png")
            stored[row.index] = (key, image)
            if row.storage_key is None:
                added.append(key)
    except JobFailure as exc:
        for key in added:
            storage.delete(key)
        with db.begin() as session:
            training.preparation_failed(session, job_id, exc.code, exc.message)
        log.info("training %s: preparation failed (%s)", job_id, exc.code.value)
        return f"failed:{exc.code.value}"
    # 4. Record them and hand the version to the training queue, then publish.
    with db.begin() as session:
        moved = training.prepared(session, job_id)
        for index, (key, image) in stored.items() if moved else ():
            session.execute(
                update(TrainingImage)
                .where(TrainingImage.style_id == style_id, TrainingImage.version == number,
                       TrainingImage.index == index)
                .values(storage_key=key, sha256=image.sha256, width=image.width, height=image.height)
                .execution_options(synchronize_session=False)
            )
    if not moved:  # canceled (or removed) meanwhile: what this step added for it goes
        for key in added:
            storage.delete(key)
        return "skipped"
    if publisher.send(tasks.TRAIN, job_id, tasks.QUEUE_TRAINING):
        with db.begin() as session:
            training.mark_published(session, job_id)
    log.info("training %s prepared: %d picture(s) normalised", job_id, len(stored))
    return "prepared"
