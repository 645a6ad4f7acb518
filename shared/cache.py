"""The result cache and in-flight dedupe: no GPU second spent on images already made, or being made.

**Key.** sha256 over canonical JSON (sorted keys, floats as floats, ``KEY_VERSION`` first) of everything that
determines the images: the client (a key never crosses clients), the model profile, the prompt actually used (after
``api.prompts``), the negative prompt, every param (seed, size, steps, guidance, number and format of images,
adapter and LoRA scales; the quality when it is ``draft``, so draft and final are cached apart and final keys are
those made before qualities), the A/B variant and experiment (the key is computed after ``apply_variant``), each
subject reference's image sha256 in order with the face crop the identity adapter sees of it
(``shared.faces.crop_tag``: the crop rule, the detector and the box) and the regions the people are masked to
(``shared.regions``: the columns when none are given),
the style reference's sha256, and the LoRA as ``name@version`` with its file's sha256 (a bare name
is resolved to its active version at submit, and the job is pinned to that version). Not in it, because they do not
change the pixels: ``user_id`` (images of one client are shared between its users), ``metadata``, ``webhook_url``,
``cancel_after``, ``priority`` (and so the queue), ``on_subject_error`` (stored subjects never fail at submit),
``memory_context.content`` (kept with the job, never in the prompt; the title and date count through the prompt),
the ``Idempotency-Key``.

**Cacheable** only with the result cache on (``ILLUSTRATIONS_RESULT_CACHE``), an explicit seed (a drawn seed asks for
a new picture) and nothing for the preparation step to do: no reference given by URL (fetched later, so its content
is unknown at submit) and no subject photo stored before faces were detected (its crop is known only once the step
has looked).

**Model revision.** Workers record the revision of the weights they run (``worker.pipeline.profiles.read_revision``)
on each job (``model.revision``) and on each ``generation_metrics`` row. An entry keeps the revision its images were
made with, and a hit needs it to equal the revision of the latest successful generation of the profile: after a
new model is rolled out, its first job makes the old entries miss (they expire with the retention). The device
type decides the dtype (CUDA bf16, CPU float32) and a deployment runs one device type, so it is not compared.

**Hit** (``Submission.new_job``): a new job born ``succeeded`` and ``cached`` whose ``job_images`` rows name the same
storage keys as the source job's (``shared.deletion.jobs`` deletes an object only when no other job lists it).
The source row is locked (``FOR KEY SHARE``) and the source user's deletion checked under its lock
(``find_source``), so a deletion meanwhile is a miss, never an image removed under a new job.

**Follower**: an identical keyed job already queued or running (locked ``FOR SHARE``, so it cannot finish before the
follower is committed) is followed: the new job stays ``queued``, unpublished, and ``jobs_finished`` (registered
with ``shared.jobs.on_finished``, so it runs for every terminal transition) finishes it with its leader as that
transaction commits: succeeded → succeeded sharing the images, failed → failed with the same code, canceled or
``worker_lost`` → the follower becomes an ordinary queued job that the relay publishes. ``release_orphans`` (the
sweep) does the same for followers whose leader vanished. Two identical requests that arrive at the very same moment
may both run.

**Index** in PostgreSQL (``cache_entries``), written in the leader's success transaction; expiry in upkeep.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

from prometheus_client import Counter
from sqlalchemy import delete, event, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, aliased

from shared import deletion, faces, jobs, regions, styles
from shared.db import utcnow
from shared.errors import ErrorCode
from shared.models import CacheEntry, GenerationMetric, Job, JobImage, new_id
from shared.schemas import IllustrationRequest
from shared.settings import Settings
from shared.states import JobStatus
from shared.stored_request import StoredRef, StoredRequest

# 2: face crops and regions (the identity adapter sees the face, not the whole photo: the images of version 1 keys
# with a face in a subject photo are not what the same request makes now).
KEY_VERSION: Final = 2
# A leader that failed for one of these reasons failed through no fault of the request: followers run themselves.
RELEASING_CODES: Final = frozenset({ErrorCode.WORKER_LOST.value})

LOOKUPS = Counter("illustrations_result_cache_lookups", "Cacheable submissions by outcome: hit (answered from "
                  "stored images), follow (joined an identical job in flight), miss (runs on a GPU).", ["outcome"])
NAMES: Final = ("illustrations_result_cache_lookups_total",)


# --- the key ----------------------------------------------------------------------------------------------------
def canonical(value: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, ASCII only; floats as Python writes them (shortest round trip)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def key_document(client_id: str, profile: str, request: StoredRequest, prompt_used: str,
                 lora: styles.ResolvedStyle | None) -> dict[str, Any]:
    """What the key is computed over (see the module docstring for what is left out, and why). A request with a
    reference given by URL has no key (its content is known only after the preparation step)."""
    resolved = request.resolved
    if resolved.needs_fetching():
        raise ValueError("a request with a reference given by URL has no key")
    # The style is replaced by the resolved version and its file's sha256 below. Floats are floats (the model's
    # types): 7 and 7.0 are one guidance scale.
    # ``quality`` is in a draft's params only, so final keys stay those made before qualities existed.
    final = request.params.quality == "final"
    params = request.params.model_dump(mode="json", exclude={"style_lora", "quality"} if final else {"style_lora"})
    return {
        "v": KEY_VERSION,
        "client": client_id,
        "profile": profile,
        "prompt": prompt_used,
        "negative_prompt": request.negative_prompt,
        "params": params,
        "identity": [ref.sha256 for ref in resolved.identity if isinstance(ref, StoredRef)],
        "crops": [faces.crop_tag(faces.as_box(ref.face), ref.detector) for ref in resolved.identity
                  if isinstance(ref, StoredRef)],
        "regions": regions.regions_used(resolved.given_regions()),
        "style_reference": resolved.style.sha256 if isinstance(resolved.style, StoredRef) else None,
        "lora": {"name": lora.label, "sha256": lora.sha256} if lora else None,
        "variant": request.variant,
        "experiment": request.experiment,
    }


def compute_key(client_id: str, profile: str, request: StoredRequest, prompt_used: str,
                lora: styles.ResolvedStyle | None) -> str:
    return hashlib.sha256(canonical(key_document(client_id, profile, request, prompt_used, lora))).hexdigest()


def request_key(session: Session, settings: Settings, client_id: str, body: IllustrationRequest,
                request: StoredRequest, prompt_used: str) -> tuple[str | None, StoredRequest]:
    """The key of an accepted request (None when it is not cacheable) and the request to store. ``request`` is the
    stored request (variant applied, references resolved); a keyed request's bare LoRA name is pinned to the
    version the key names."""
    if not settings.result_cache or body.params.seed is None:
        return None, request
    resolved = request.resolved
    if resolved.needs_preparing():
        return None, request  # given by URL, or a face not looked for yet: known only after the preparation step
    lora = None
    if resolved.style_lora is not None:
        try:
            lora = styles.resolve(session, client_id, resolved.style_lora)
        except styles.StyleNotFound:
            return None, request
        pinned = replace(resolved.style_lora, version=lora.version)
        request = request.model_copy(update={"resolved": resolved.model_copy(update={"style_lora": pinned})})
    return compute_key(client_id, settings.model_profile, request, prompt_used, lora), request


# --- submit: hit, follow or miss --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Source:
    job_id: str
    model: dict[str, Any] | None
    steps: int | None
    images: list[jobs.StoredImage]
    now: datetime  # the database's clock, read with the entry: the hit's finished_at


def current_revision(profile: str) -> Any:
    """The revision of the latest successful generation of ``profile`` (what the workers run now), as a subquery."""
    return (
        select(GenerationMetric.revision)
        .where(GenerationMetric.profile == profile, GenerationMetric.outcome == JobStatus.SUCCEEDED.value)
        .order_by(GenerationMetric.created_at.desc())
        .limit(1)
        .scalar_subquery()
    )


def find_source(session: Session, settings: Settings, client_id: str, user_id: str, key: str) -> Source | None:
    """The finished job whose images answer ``key`` now, if any (same revision, within retention, not being
    deleted), with its images: one read, which also locks the source row (``FOR KEY SHARE``) until commit.

    Deletion safety: the lock keeps a deletion of the source user from finishing before this transaction does, so
    one that started is still ``running`` when it is checked. When the source belongs to the submitting user, the
    caller's ``refuse_if_deleting`` makes that check (409); for another user it is made here, under that user's
    deletion lock taken shared: a deletion requested before is seen (a miss), one requested later waits for this
    commit and then sees the new job's image rows, so it keeps the objects they share.
    """
    rows = session.execute(
        select(CacheEntry.job_id, Job.user_id, Job.model, Job.progress_total, utcnow().label("now"),
               JobImage.index.label("image_index"), JobImage.storage_key, JobImage.content_type, JobImage.width,
               JobImage.height, JobImage.sha256, JobImage.size_bytes)
        .join(Job, Job.id == CacheEntry.job_id)
        .join(JobImage, JobImage.job_id == CacheEntry.job_id)
        .where(CacheEntry.client_id == client_id, CacheEntry.key == key,
               CacheEntry.created_at > utcnow(-settings.cache_retention_s),
               CacheEntry.revision == current_revision(settings.model_profile),
               Job.status == JobStatus.SUCCEEDED.value)
        .order_by(JobImage.index)
        .with_for_update(key_share=True, of=Job)
    ).all()
    if not rows:
        return None
    first = rows[0]
    if first.user_id != user_id:
        deletion.lock_user(session, client_id, first.user_id, exclusive=False)
        if deletion.in_progress(session, client_id, first.user_id) is not None:
            return None
    images = [jobs.StoredImage(index=row.image_index, storage_key=row.storage_key, content_type=row.content_type,
                               width=row.width, height=row.height, sha256=row.sha256, size_bytes=row.size_bytes)
              for row in rows]
    return Source(first.job_id, first.model, first.progress_total, images, first.now)


def find_leader(session: Session, client_id: str, key: str) -> str | None:
    """An identical job queued or running now (not itself a follower), locked against finishing until commit."""
    return session.execute(
        select(Job.id)
        .where(Job.client_id == client_id, Job.cache_key == key,
               Job.status.in_((JobStatus.QUEUED.value, JobStatus.RUNNING.value)),
               Job.follows_job_id.is_(None), Job.cached.is_(False))
        .order_by(Job.created_at)
        .limit(1)
        .with_for_update(read=True)
    ).scalar_one_or_none()


@dataclass
class Submission:
    """One ``accept`` call's use of the cache: it makes each job row (hit, follower or ordinary) and, after the
    flush, finishes the hits (``accepted``). Identical keyed requests of one call (a batch) follow the first."""

    session: Session
    settings: Settings
    client_id: str
    hits: list[tuple[str, str]] = field(default_factory=list)  # (key, job id)
    outcomes: list[str] = field(default_factory=list)
    _leaders: dict[str, str] = field(default_factory=dict)  # key -> id of this call's first job with it

    def new_job(self, key: str | None, **columns: Any) -> Job:
        if key is None:
            return jobs.new_job(**columns)
        source = find_source(self.session, self.settings, self.client_id, columns["user_id"], key)
        if source is not None:
            row = jobs.new_cached_job(source.images, id=new_id(), cache_key=key, model=source.model,
                                      progress_step=source.steps, progress_total=source.steps,
                                      finished_at=source.now, **columns)
            self.hits.append((key, row.id))
            self.outcomes.append("hit")
            return row
        leader = self._leaders.get(key) or find_leader(self.session, self.client_id, key)
        row = jobs.new_job(id=new_id(), cache_key=key, follows_job_id=leader, **columns)
        if leader is None:
            self._leaders[key] = row.id
        self.outcomes.append("miss" if leader is None else "follow")
        return row

    def accepted(self) -> None:
        """After the rows are flushed: the hits are finished jobs (``finished``) and their entries are counted."""
        for outcome in self.outcomes:
            LOOKUPS.labels(outcome).inc()
        if self.hits:
            self.session.info.setdefault(_BORN_CACHED, set()).update(job_id for _, job_id in self.hits)
            jobs.finished(self.session, [job_id for _, job_id in self.hits])
            self.session.execute(
                update(CacheEntry)
                .where(CacheEntry.client_id == self.client_id, CacheEntry.key.in_({key for key, _ in self.hits}))
                .values(hits=CacheEntry.hits + 1, last_hit_at=utcnow())
                .execution_options(synchronize_session=False)
            )


def needs_publish(row: Job) -> bool:
    """A new row that goes to a queue: not a hit (born finished), not a follower (finishes with its leader)."""
    return row.status == JobStatus.QUEUED.value and row.follows_job_id is None


# --- a job finished: the entry, and its followers ------------------------------------------------------------------
def _upsert_entries(session: Session, ids: Sequence[str]) -> None:
    """One statement: an entry for each keyed job (not itself a cache hit) that just succeeded."""
    source = (
        select(Job.client_id, Job.cache_key, Job.id, Job.model["revision"].as_string(), utcnow())
        .where(Job.id.in_(ids))
    )
    columns = ["client_id", "key", "job_id", "revision", "created_at"]
    dialect = session.get_bind().dialect.name
    stmt: Any
    if dialect == "postgresql":
        stmt = postgresql.insert(CacheEntry).from_select(columns, source)
    elif dialect == "sqlite":
        stmt = sqlite.insert(CacheEntry).from_select(columns, source)
    else:  # pragma: no cover - the two databases this project runs on
        raise RuntimeError(f"no upsert for {dialect}")
    stmt = stmt.on_conflict_do_update(
        index_elements=[CacheEntry.client_id, CacheEntry.key],
        set_={"job_id": stmt.excluded.job_id, "revision": stmt.excluded.revision,
              "created_at": stmt.excluded.created_at, "last_hit_at": None, "hits": 0},
    )
    session.execute(stmt)


@jobs.on_finished("cache")
def jobs_finished(session: Session, job_ids: Sequence[str], *, write_entries: bool = True) -> None:
    """The on-finished hook (``shared.jobs.on_finished``): runs in every transaction that makes jobs terminal.

    Unkeyed jobs cost one primary-key read; a keyed one that succeeded writes its entry; a leader's followers finish
    with it just before the transaction commits (``_settle_followers``: a succeeding leader's images are inserted
    after its transition)."""
    ids = [job_id for job_id in job_ids if job_id not in session.info.get(_BORN_CACHED, ())]
    if not ids:
        return  # hits of this transaction: born finished, no entry and no followers of their own
    rows = session.execute(
        select(Job.id, Job.status)
        .where(Job.id.in_(ids), Job.cache_key.is_not(None), Job.cached.is_(False))
    ).all()
    if not rows:
        return
    succeeded = [row.id for row in rows if row.status == JobStatus.SUCCEEDED.value]
    if succeeded and write_entries:
        _upsert_entries(session, succeeded)
    session.info.setdefault(_LEADERS, set()).update(row.id for row in rows)


_LEADERS: Final = "illustrations.cache.leaders"
_BORN_CACHED: Final = "illustrations.cache.born_cached"


@event.listens_for(Session, "before_commit")
def _settle_followers(session: Session) -> None:
    """In the transaction that finished keyed jobs, as it commits: their followers finish with them (succeeded →
    succeeded sharing the images, failed → failed with the same code) or become ordinary queued jobs."""
    session.info.pop(_BORN_CACHED, None)
    while leaders := session.info.pop(_LEADERS, None):  # (followers failing here register themselves: no-ops)
        _settle(session, leaders)


def _settle(session: Session, leaders: set[str]) -> None:
    rows = session.execute(
        select(Job.id, Job.status, Job.error_code, Job.error_message, Job.model, Job.progress_total)
        .where(Job.id.in_(sorted(leaders)))
    ).all()
    released = []
    for row in rows:
        if row.status == JobStatus.SUCCEEDED.value:
            jobs.followers_succeeded(session, row.id, row.model, row.progress_total)
        elif row.status == JobStatus.FAILED.value and row.error_code not in RELEASING_CODES:
            jobs.followers_failed(session, row.id, row.error_code or ErrorCode.INTERNAL.value, row.error_message)
        else:
            released.append(row.id)
    jobs.followers_released(session, released)


@event.listens_for(Session, "after_rollback")
def _forget_leaders(session: Session) -> None:
    session.info.pop(_LEADERS, None)
    session.info.pop(_BORN_CACHED, None)


# --- upkeep ---------------------------------------------------------------------------------------------------------
def release_orphans(session: Session, limit: int = 500) -> list[str]:
    """Followers whose leader is finished or gone (a race the locks do not cover, a leader deleted): finish them
    with a finished leader, release those of a vanished one."""
    leader = aliased(Job)
    rows = session.execute(
        select(Job.follows_job_id, leader.id)
        .outerjoin(leader, leader.id == Job.follows_job_id)
        .where(Job.follows_job_id.is_not(None), Job.status == JobStatus.QUEUED.value,
               (leader.id.is_(None)) | (leader.status.not_in((JobStatus.QUEUED.value, JobStatus.RUNNING.value))))
        .distinct()
        .limit(limit)
    ).all()
    gone = [row.follows_job_id for row in rows if row.id is None]
    done = [row.id for row in rows if row.id is not None]
    before = set(session.execute(
        select(Job.id).where(Job.follows_job_id.in_([row.follows_job_id for row in rows]),
                             Job.status == JobStatus.QUEUED.value)
    ).scalars()) if rows else set()
    if done:
        jobs_finished(session, done, write_entries=False)
    jobs.followers_released(session, gone)
    return sorted(before)


def expire(session: Session, retention_s: float) -> int:
    """Forget entries older than the retention (their images stay with their jobs)."""
    result = session.execute(
        delete(CacheEntry).where(CacheEntry.created_at <= utcnow(-retention_s))
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def entries(session: Session, client_id: str) -> list[CacheEntry]:
    return list(session.execute(select(CacheEntry).where(CacheEntry.client_id == client_id)).scalars())

