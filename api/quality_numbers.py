"""Quality numbers (``GET /v1/metrics/quality``), computed in the database, per model profile, A/B variant and
quality (``final`` or ``draft``: a row from before qualities is final).

- Jobs finished in the range: counts per state, success rate (succeeded / (succeeded + failed)), failures by code.
- Succeeded attempts (``generation_metrics``): p50/p95 of the queue wait, the time on the worker and the inference.
- Feedback given in the range: count and mean rating.

Percentiles are ``percentile_cont`` (linear interpolation between the two nearest ranks), with one helper per
dialect: PostgreSQL has the ordered-set aggregate; SQLite has none, so there the rows are ranked with window
functions (``row_number() - 1`` = r, ``count()`` = n over the group) and the value at position p·(n - 1) is
interpolated from the rows at its floor and floor + 1 in one aggregate. Both give the same numbers (tested on
seeded rows against hand-computed answers).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import ColumnElement, Integer, case, cast, func, literal, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from shared.db import utcnow
from shared.models import Feedback, GenerationMetric, Job
from shared.schemas import FeedbackSummary, Percentiles, QualityGroup, QualityOut
from shared.states import JobStatus

PERCENTILES: Final = (0.5, 0.95)
NO_PROFILE: Final = "none"
DEFAULT_VARIANT: Final = "a"
DEFAULT_QUALITY: Final = "final"
_RANGE = re.compile(r"^(?P<count>[1-9][0-9]{0,3})(?P<unit>[hd])$")

Group = tuple[Any, ...]


def parse_range(text: str) -> timedelta:
    """``24h`` or ``7d`` as a duration; ValueError for anything else."""
    match = _RANGE.match(text)
    if match is None:
        raise ValueError("must be N hours (24h) or N days (7d)")
    count = int(match["count"])
    return timedelta(hours=count) if match["unit"] == "h" else timedelta(days=count)


def percentiles(session: Session, value: ColumnElement[Any] | InstrumentedAttribute[Any],
                groups: Sequence[ColumnElement[Any]], where: Sequence[ColumnElement[bool]],
                ps: Sequence[float] = PERCENTILES) -> dict[Group, list[float]]:
    """``percentile_cont(p)`` of ``value`` for each p, per group (rows with a null value are left out)."""
    column: ColumnElement[Any] = value.expression if isinstance(value, InstrumentedAttribute) else value
    conditions = [column.is_not(None), *where]
    if session.get_bind().dialect.name == "postgresql":
        return _percentiles_postgresql(session, column, groups, conditions, ps)
    return _percentiles_by_rank(session, column, groups, conditions, ps)


def _percentiles_postgresql(session: Session, value: ColumnElement[Any], groups: Sequence[ColumnElement[Any]],
                            where: Sequence[ColumnElement[bool]], ps: Sequence[float]) -> dict[Group, list[float]]:
    columns = [func.percentile_cont(p).within_group(value.asc()) for p in ps]
    rows = session.execute(select(*groups, *columns).where(*where).group_by(*groups))
    width = len(groups)
    return {tuple(row[:width]): [float(x) for x in row[width:]] for row in rows}


def _percentiles_by_rank(session: Session, value: ColumnElement[Any], groups: Sequence[ColumnElement[Any]],
                         where: Sequence[ColumnElement[bool]], ps: Sequence[float]) -> dict[Group, list[float]]:
    """Any database with window functions (SQLite): interpolate between the ranks around p·(n - 1)."""
    ranked = select(
        *[group.label(f"g{i}") for i, group in enumerate(groups)],
        value.label("v"),
        (func.row_number().over(partition_by=list(groups), order_by=value) - 1).label("r"),
        func.count().over(partition_by=list(groups)).label("n"),
    ).where(*where).subquery()
    keys = [ranked.c[f"g{i}"] for i in range(len(groups))]
    columns = []
    for p in ps:
        position = literal(p) * (ranked.c.n - 1)
        floor = cast(position, Integer)  # positions are >= 0: truncation is the floor
        fraction = position - floor
        columns.append(func.sum(case(
            (ranked.c.r == floor, ranked.c.v * (1 - fraction)),
            (ranked.c.r == floor + 1, ranked.c.v * fraction),
            else_=0.0,
        )))
    rows = session.execute(select(*keys, *columns).group_by(*keys))
    width = len(groups)
    return {tuple(row[:width]): [float(x) for x in row[width:]] for row in rows}


@dataclass
class _Numbers:
    counts: dict[str, int] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    timings: dict[str, list[float]] = field(default_factory=dict)
    feedback: tuple[int, float | None] = (0, None)


def _job_groups() -> tuple[ColumnElement[Any], ColumnElement[Any], ColumnElement[Any]]:
    return (func.coalesce(Job.model["profile"].as_string(), NO_PROFILE),
            func.coalesce(Job.request["variant"].as_string(), DEFAULT_VARIANT),
            func.coalesce(Job.request[("params", "quality")].as_string(), DEFAULT_QUALITY))


def _percentiles_out(values: list[float] | None) -> Percentiles:
    if values is None:
        return Percentiles(p50=None, p95=None)
    return Percentiles(p50=round(values[0], 4), p95=round(values[1], 4))


def quality(session: Session, range_text: str) -> QualityOut:
    """The quality numbers of the last ``range_text`` (``7d``), per profile, variant and quality, over every
    client."""
    until: datetime = session.execute(select(utcnow())).scalar_one()
    since = until - parse_range(range_text)
    numbers: dict[Group, _Numbers] = {}

    def at(key: Group) -> _Numbers:
        return numbers.setdefault(tuple(key), _Numbers())

    # 1. Jobs that finished in the range: states and failure codes.
    profile, variant, quality_ = _job_groups()
    finished = [Job.finished_at >= since, Job.status.in_([s.value for s in JobStatus if s.is_terminal()])]
    for row in session.execute(
        select(profile, variant, quality_, Job.status, Job.error_code, func.count())
        .where(*finished).group_by(profile, variant, quality_, Job.status, Job.error_code)
    ):
        entry = at((row[0], row[1], row[2]))
        entry.counts[row[3]] = entry.counts.get(row[3], 0) + row[5]
        if row[3] == JobStatus.FAILED.value and row[4]:
            entry.failures[row[4]] = entry.failures.get(row[4], 0) + row[5]

    # 2. Succeeded attempts: where the time went.
    metric_groups = [func.coalesce(GenerationMetric.profile, NO_PROFILE),
                     func.coalesce(GenerationMetric.variant, DEFAULT_VARIANT),
                     func.coalesce(GenerationMetric.quality, DEFAULT_QUALITY)]
    attempts = [GenerationMetric.created_at >= since, GenerationMetric.outcome == "succeeded"]
    for name, column in (("queue_wait_s", GenerationMetric.queue_wait_s), ("generation_s", GenerationMetric.total_s),
                         ("inference_s", GenerationMetric.inference_s)):
        for key, values in percentiles(session, column, metric_groups, attempts).items():
            at(key).timings[name] = values

    # 3. Feedback given in the range.
    feedback_groups = [func.coalesce(Feedback.profile, NO_PROFILE), func.coalesce(Feedback.variant, DEFAULT_VARIANT),
                       func.coalesce(Feedback.quality, DEFAULT_QUALITY)]
    for row in session.execute(
        select(*feedback_groups, func.count(), func.avg(Feedback.rating))
        .where(Feedback.created_at >= since).group_by(*feedback_groups)
    ):
        at((row[0], row[1], row[2])).feedback = (int(row[3]), float(row[4]) if row[4] is not None else None)

    groups = []
    for (profile_name, variant_name, quality_name), entry in sorted(numbers.items()):
        succeeded = entry.counts.get(JobStatus.SUCCEEDED.value, 0)
        failed = entry.counts.get(JobStatus.FAILED.value, 0)
        count, mean = entry.feedback
        groups.append(QualityGroup(
            profile=profile_name, variant=variant_name, quality=quality_name, jobs=sum(entry.counts.values()),
            succeeded=succeeded,
            failed=failed, canceled=entry.counts.get(JobStatus.CANCELED.value, 0),
            success_rate=round(succeeded / (succeeded + failed), 4) if succeeded + failed else None,
            failures=dict(sorted(entry.failures.items())),
            queue_wait_s=_percentiles_out(entry.timings.get("queue_wait_s")),
            generation_s=_percentiles_out(entry.timings.get("generation_s")),
            inference_s=_percentiles_out(entry.timings.get("inference_s")),
            feedback=FeedbackSummary(count=count, mean_rating=round(mean, 4) if mean is not None else None),
        ))
    return QualityOut(range=range_text, since=since, until=until, groups=groups)
