"""The ``cache_entries`` part of a user deletion: the result cache's entries whose images are the user's.

Runs before ``jobs`` (whose rows the entries point at; the foreign key would cascade anyway). The images
themselves go with the ``jobs`` part, which keeps every object another job still lists: a cache hit or a follower
of another user shares the stored images of the job it was answered from.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shared.deletion import part
from shared.models import CacheEntry, Job
from shared.storage import Storage


@part("cache_entries", order=5)
def delete_cache_entries(session: Session, storage: Storage, client_id: str, user_id: str) -> int:
    result = session.execute(
        delete(CacheEntry)
        .where(CacheEntry.client_id == client_id,
               CacheEntry.job_id.in_(select(Job.id).where(Job.client_id == client_id, Job.user_id == user_id)))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
