"""The result cache's database side on PostgreSQL and SQLite alike: the entry upsert, followers finishing with
their leader before the commit, a hit born finished, expiry."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update

from shared import cache, jobs
from shared.db import Database, utcnow
from shared.models import CacheEntry, GenerationMetric, Job, JobImage
from tests.helpers import image_keys, new_client

KEY = "ab" * 32
REVISION = "tiny-abcdef012345"


def columns(client_id: str, user_id: str = "u1") -> dict[str, Any]:
    return {"client_id": client_id, "user_id": user_id, "priority": "interactive", "queue": "illustrations.interactive",
            "request": {"prompt": "p", "params": {"steps": 2}}, "seed": 1, "prompt_used": "p", "warnings": []}


def accept(db: Database, client_id: str, user_id: str = "u1") -> Job:
    with db.begin() as session:
        submission = cache.Submission(session, db.settings, client_id)
        row = submission.new_job(KEY, **columns(client_id, user_id))
        session.add(row)
        session.flush()
        submission.accepted()
        return row


def succeed(db: Database, job: Job, images: int = 2) -> None:
    with db.begin() as session:
        claim = jobs.started(session, job.id, "w", 60)
        assert isinstance(claim, jobs.Claim)
        stored = [jobs.StoredImage(i, f"jobs/{job.id}/1/{i}.png", "image/png", 64, 64, "0" * 64, 10)
                  for i in range(images)]
        assert jobs.succeeded(session, claim, stored, model={"profile": "tiny", "revision": REVISION})
        session.add(GenerationMetric(job_id=job.id, client_id=job.client_id, user_id=job.user_id, attempt=1,
                                     outcome="succeeded", queue=job.queue, queue_wait_s=0, total_s=1, steps=2,
                                     width=64, height=64, num_images=images, identity_refs=0, style_ref=False,
                                     embeddings_cached=0, profile="tiny", revision=REVISION))


def test_follow_succeed_then_hit_then_expire(any_db: Database) -> None:
    client_id = new_client(any_db)
    leader = accept(any_db, client_id)
    follower = accept(any_db, client_id, "u2")
    assert leader.follows_job_id is None
    assert follower.follows_job_id == leader.id
    succeed(any_db, leader)
    with any_db.begin() as session:
        done = session.get_one(Job, follower.id)
        assert done.status == "succeeded"
        assert done.cached
        assert done.finished_at is not None
        entry = session.execute(select(CacheEntry).where(CacheEntry.client_id == client_id)).scalar_one()
        assert entry.key == KEY
        assert entry.job_id == leader.id
        assert entry.revision == REVISION
        assert entry.hits == 0
    assert image_keys(any_db, follower.id) == image_keys(any_db, leader.id)
    assert len(image_keys(any_db, leader.id)) == 2

    hit = accept(any_db, client_id, "u3")
    assert hit.status == "succeeded"
    assert hit.cached
    assert hit.finished_at is not None
    assert image_keys(any_db, hit.id) == image_keys(any_db, leader.id)
    with any_db.begin() as session:
        assert jobs.transitions(session, hit.id) == [(None, "succeeded", 0, "cached")]
        assert session.get_one(CacheEntry, (client_id, KEY)).hits == 1
        session.execute(update(CacheEntry).where(CacheEntry.client_id == client_id)
                        .values(created_at=utcnow(-3600)))
        assert cache.expire(session, 60) >= 1
    assert accept(any_db, client_id).status == "queued"


def test_a_failed_leader_fails_its_followers(any_db: Database) -> None:
    from shared.errors import ErrorCode

    client_id = new_client(any_db)
    leader = accept(any_db, client_id)
    follower = accept(any_db, client_id)
    with any_db.begin() as session:
        claim = jobs.started(session, leader.id, "w", 60)
        assert isinstance(claim, jobs.Claim)
        assert jobs.failed(session, claim, ErrorCode.OUT_OF_MEMORY, "too big")
    with any_db.begin() as session:
        job = session.get_one(Job, follower.id)
        assert (job.status, job.error_code, job.error_message) == ("failed", "out_of_memory", "too big")
        assert session.execute(select(CacheEntry).where(CacheEntry.client_id == client_id)).first() is None


def test_the_sweep_settles_followers_a_finished_leader_left_behind(any_db: Database) -> None:
    client_id = new_client(any_db)
    leader = accept(any_db, client_id)
    follower = accept(any_db, client_id)
    with any_db.begin() as session:  # finished without the seam (what a lost race would leave)
        session.execute(update(Job).where(Job.id == leader.id).values(status="succeeded", progress_total=2))
        session.add(JobImage(job_id=leader.id, index=0, storage_key="jobs/x/1/0.png", content_type="image/png",
                             width=64, height=64, sha256="0" * 64, size_bytes=10))
    with any_db.begin() as session:
        assert cache.release_orphans(session) == [follower.id]
    with any_db.begin() as session:
        assert session.get_one(Job, follower.id).status == "succeeded"
        assert cache.release_orphans(session) == []
    assert image_keys(any_db, follower.id) == ["jobs/x/1/0.png"]
