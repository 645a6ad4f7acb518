"""The ``training_images`` part of a user deletion: the pictures of that user in any training set of the client.

Each picture's object and row go. Every style version trained (or training) on them is marked
(``training_data_deleted_at``): its weights remain usable, and the mark says they were learned partly from a
deleted user's pictures (``illustrations styles remove`` removes a version). A training that has not finished is
canceled (``user_deleted``): queued now, running at its next step, since its set is no longer whole.
"""

from __future__ import annotations

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.orm import Session

from shared import training
from shared.db import utcnow
from shared.deletion import part
from shared.errors import CancelReason
from shared.models import Style, StyleVersion, TrainingImage
from shared.storage import Storage


@part("training_images", order=30)
def delete_training_images(session: Session, storage: Storage, client_id: str, user_id: str) -> int:
    rows = list(session.execute(
        select(TrainingImage.style_id, TrainingImage.version, TrainingImage.index, TrainingImage.storage_key)
        .join(Style, Style.id == TrainingImage.style_id)
        .where(Style.client_id == client_id, TrainingImage.user_id == user_id)
    ))
    if not rows:
        return 0
    for row in rows:
        if row.storage_key:
            storage.delete(row.storage_key)
    versions = sorted({(row.style_id, row.version) for row in rows})
    for style_id, version in versions:
        if training.cancel(session, style_id, version, CancelReason.USER_DELETED) == "canceled":
            storage.delete(training.checkpoint_key(style_id, version))  # given back earlier: nothing resumes it
    session.execute(
        update(StyleVersion)
        .where(tuple_(StyleVersion.style_id, StyleVersion.version).in_(versions),
               StyleVersion.training_data_deleted_at.is_(None))
        .values(training_data_deleted_at=utcnow()).execution_options(synchronize_session=False)
    )
    session.execute(
        delete(TrainingImage)
        .where(tuple_(TrainingImage.style_id, TrainingImage.version, TrainingImage.index)
               .in_([(row.style_id, row.version, row.index) for row in rows]))
        .execution_options(synchronize_session=False)
    )
    return len(rows)
