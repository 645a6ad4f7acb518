"""Quality numbers computed in the database, on PostgreSQL (percentile_cont) and SQLite (window functions), against
answers worked out by hand from seeded rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from api import quality_numbers
from shared.db import Database
from shared.models import Client, Feedback, GenerationMetric, Job

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=10)


def _metric(client_id: str, profile: str, variant: str, queue_wait_s: float, total_s: float,
            inference_s: float | None = None, outcome: str = "succeeded",
            created_at: datetime = NOW) -> GenerationMetric:
    return GenerationMetric(
        job_id=str(uuid.uuid4()), client_id=client_id, user_id="u", attempt=1, outcome=outcome, queue="q",
        queue_wait_s=queue_wait_s, total_s=total_s, inference_s=inference_s, steps=2, width=64, height=64,
        num_images=1, profile=profile, identity_refs=0, style_ref=False, embeddings_cached=0, variant=variant,
        created_at=created_at)


def _job(client_id: str, profile: str, variant: str, status: str, code: str | None = None,
         finished_at: datetime = NOW) -> Job:
    return Job(client_id=client_id, user_id="u", status=status, attempt=1, priority="interactive", queue="q",
               request={"prompt": "p", "params": {"steps": 2}, "variant": variant}, seed=1, error_code=code,
               finished_at=finished_at, model={"profile": profile, "variant": variant}, warnings=[])


@pytest.fixture
def seeded(any_db: Database) -> tuple[Database, str]:
    """Rows of a profile of its own (the PostgreSQL database is shared by the session's other tests)."""
    profile = f"q-{uuid.uuid4().hex[:8]}"
    with any_db.begin() as session:
        client = Client(name=f"quality-{profile}")
        session.add(client)
        session.flush()
        cid = client.id
        for wait, total, inference in ((1, 2, 0.5), (2, 4, None), (3, 0, None), (4, 0, None), (10, 0, None)):
            session.add(_metric(cid, profile, "a", wait, total, inference))
        session.add(_metric(cid, profile, "a", 100, 100, 100, outcome="failed"))  # not a succeeded attempt
        session.add(_metric(cid, profile, "a", 1000, 1000, 1000, created_at=OLD))  # outside the range
        session.add(_metric(cid, profile, "b", 5, 6, 2.5))
        jobs = [_job(cid, profile, "a", "succeeded") for _ in range(3)]
        jobs += [_job(cid, profile, "a", "failed", "out_of_memory"), _job(cid, profile, "a", "canceled",
                                                                          "canceled_by_client")]
        jobs += [_job(cid, profile, "a", "failed", "internal", finished_at=OLD)]  # outside the range
        jobs += [_job(cid, profile, "b", "succeeded"), _job(cid, profile, "b", "failed", "time_limit"),
                 _job(cid, profile, "b", "failed", "time_limit")]
        session.add_all(jobs)
        session.flush()
        for job, rating in zip(jobs[:3], (5, 4, 2), strict=True):
            session.add(Feedback(job_id=job.id, client_id=cid, user_id="u", rating=rating, profile=profile,
                                 variant="a"))
        session.add(Feedback(job_id=jobs[6].id, client_id=cid, user_id="u", rating=3, profile=profile, variant="b"))
    return any_db, profile


def test_quality_numbers_match_hand_computed_answers(seeded: tuple[Database, str]) -> None:
    database, profile = seeded
    with database.begin() as session:
        out = quality_numbers.quality(session, "7d")
    groups = {(g.profile, g.variant): g for g in out.groups if g.profile == profile}
    assert set(groups) == {(profile, "a"), (profile, "b")}
    a, b = groups[(profile, "a")], groups[(profile, "b")]
    # Variant a: queue waits 1, 2, 3, 4, 10 → p50 = 3; p95 at 0.95·4 = 3.8 → 4 + 0.8·(10 - 4) = 8.8.
    assert a.queue_wait_s.p50 == pytest.approx(3.0)
    assert a.queue_wait_s.p95 == pytest.approx(8.8)
    # Times on the worker 2, 4, 0, 0, 0 → sorted 0, 0, 0, 2, 4: p50 = 0; p95 at 3.8 → 2 + 0.8·2 = 3.6.
    assert a.generation_s.p50 == pytest.approx(0.0)
    assert a.generation_s.p95 == pytest.approx(3.6)
    # One inference time (the others are null and left out).
    assert a.inference_s.p50 == pytest.approx(0.5)
    assert a.inference_s.p95 == pytest.approx(0.5)
    assert (a.jobs, a.succeeded, a.failed, a.canceled) == (5, 3, 1, 1)  # one fact: the outcome counts
    assert a.success_rate == pytest.approx(0.75)
    assert a.failures == {"out_of_memory": 1}
    assert a.feedback.count == 3
    assert a.feedback.mean_rating == pytest.approx(11 / 3, abs=1e-4)
    assert b.queue_wait_s.p50 == pytest.approx(5.0)
    assert b.queue_wait_s.p95 == pytest.approx(5.0)
    assert b.generation_s.p95 == pytest.approx(6.0)
    assert b.inference_s.p50 == pytest.approx(2.5)
    assert (b.jobs, b.succeeded, b.failed) == (3, 1, 2)  # one fact: the outcome counts
    assert b.success_rate == pytest.approx(1 / 3, abs=1e-4)
    assert b.failures == {"time_limit": 2}
    assert b.feedback.mean_rating == pytest.approx(3.0)
    # A longer range takes in the old rows as well.
    with database.begin() as session:
        groups = quality_numbers.quality(session, "30d").groups
        longer = {(g.profile, g.variant): g for g in groups if g.profile == profile}
    assert longer[(profile, "a")].failures == {"internal": 1, "out_of_memory": 1}
    # Queue waits 1, 2, 3, 4, 10, 1000: p95 at 0.95·5 = 4.75 → 10 + 0.75·(1000 - 10) = 752.5.
    assert longer[(profile, "a")].queue_wait_s.p95 == pytest.approx(752.5)


def test_the_percentile_helper_interpolates_like_percentile_cont(any_db: Database) -> None:
    """Even and odd counts, ties, and one value; p = 0, 0.25, 0.5, 0.9, 1."""
    profile = f"p-{uuid.uuid4().hex[:8]}"
    samples = {"even": [4.0, 1.0, 3.0, 2.0], "odd": [7.0, 1.0, 3.0], "ties": [2.0, 2.0, 2.0, 9.0], "one": [5.0]}
    with any_db.begin() as session:
        for name, values in samples.items():
            session.add_all([_metric("c", profile, name, value, 0.0) for value in values])
    ps = (0.0, 0.25, 0.5, 0.9, 1.0)
    with any_db.begin() as session:
        found = quality_numbers.percentiles(session, GenerationMetric.queue_wait_s, [GenerationMetric.variant],
                                    [GenerationMetric.profile == profile], ps)
    expected = {  # position p·(n - 1), interpolated between its floor and floor + 1 in sorted order
        "even": [1.0, 1.75, 2.5, 3.7, 4.0],
        "odd": [1.0, 2.0, 3.0, 6.2, 7.0],
        "ties": [2.0, 2.0, 2.0, 6.9, 9.0],
        "one": [5.0] * 5,
    }
    assert set(found) == {(name,) for name in samples}
    for name, values in expected.items():
        assert found[(name,)] == pytest.approx(values), name
    with any_db.begin() as session:
        count = session.execute(select(func.count()).select_from(GenerationMetric)
                                .where(GenerationMetric.profile == profile)).scalar_one()
    assert count == 12


def test_ranges() -> None:
    assert quality_numbers.parse_range("24h") == timedelta(hours=24)
    assert quality_numbers.parse_range("7d") == timedelta(days=7)
    for bad in ("", "0d", "7w", "-1d", "1.5d", "d"):
        with pytest.raises(ValueError, match="N hours"):
            quality_numbers.parse_range(bad)
