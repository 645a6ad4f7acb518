"""Accepting illustration requests (``POST /v1/illustrations``, batches, AutoBio's route): one entry point for all
three, ``create``, which runs the outbox sequence once:

1. In one transaction, ``accept``: resolve subjects to stored versions (unknown → 422; URLs checked, fetched later by
   the preparation step), build the prompt, refuse a user whose data is being deleted (409) and a client over its
   queued quota (429), write the rows (``shared.stored_request`` is what a row keeps of the request).
2. In the same transaction, the route's answer, recorded for its ``Idempotency-Key`` (a retry gets it, committed
   with the jobs), and ``publishable``: which new jobs go to the broker now (the client's publish cap and pause, read
   from what the quota check returned).
3. After the commit, ``send`` publishes only the ids; the route then marks them (``mark``: at once, or once its answer
   is sent). The relay publishes whatever is not marked.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.errors import ApiError, FieldError, validation_error
from api.idempotency import record
from api.keys import Principal
from api.prompts import build_prompt, people_in_layout
from api.services import Services
from shared import cache, deletion, experiments, jobs, limits, styles, tasks
from shared.errors import ProblemCode
from shared.fetch import FetchBlocked, check_url
from shared.models import Batch, Client, Job, Subject
from shared.schemas import IllustrationRequest, ImageRef, SubjectRef
from shared.states import JobStatus
from shared.stored_request import Reference, Resolved, StoredRef, StoredRequest, UrlRef
from shared.subjects import face_warnings, latest_version, reference

log = logging.getLogger(__name__)


# --- 1. accept: references, the stored request, the quota --------------------------------------------------------
def _stored(session: Session, client_id: str, user_id: str, *, subject_id: str | None = None,
            name: str | None = None, region: list[float] | None = None) -> StoredRef | None:
    query = select(Subject).where(Subject.client_id == client_id, Subject.user_id == user_id)
    query = query.where(Subject.id == subject_id) if subject_id is not None else query.where(Subject.name == name)
    subject = session.execute(query).scalar_one_or_none()
    version = latest_version(session, subject.id) if subject is not None else None
    if subject is None or version is None:
        return None
    return reference(subject, version, region)


def check_webhook_url(url: str | None, field: str, svc: Services, errors: list[FieldError]) -> None:
    """A webhook URL must pass the safe fetcher's checks that need no DNS (scheme, syntax, a literal address)."""
    if url is not None:
        _url(url, field, svc, errors)


def _url(url: str, field: str, svc: Services, errors: list[FieldError]) -> bool:
    try:
        check_url(url, svc.settings.fetch_allowlist)
    except FetchBlocked as exc:
        errors.append((field, str(exc)))
        return False
    return True


def _resolve_one(session: Session, svc: Services, client_id: str, user_id: str, ref: SubjectRef | ImageRef,
                 field: str, index: int, errors: list[FieldError]) -> Reference | None:
    name = ref.name if isinstance(ref, SubjectRef) else None
    region = ref.region if isinstance(ref, SubjectRef) else None
    if ref.image_url is not None:
        if not _url(ref.image_url, f"{field}.image_url", svc, errors):
            return None
        return UrlRef(index=index, name=name, image_url=ref.image_url, region=region)  # fetched by preparation
    resolved = _stored(session, client_id, user_id, subject_id=ref.subject_id, name=name, region=region)
    if resolved is None:
        errors.append((field, "no such subject for this user"))
    elif isinstance(ref, ImageRef):  # a style reference: its style is what counts, not the face in it
        resolved = resolved.model_copy(update={"face": None, "face_count": None, "detector": None})
    return resolved


def resolve_references(session: Session, svc: Services, client_id: str, body: IllustrationRequest,
                       prefix: str, errors: list[FieldError]) -> Resolved:
    """Subjects and the style reference, resolved to stored versions (or URLs for the preparation step)."""
    identity = []
    if any(ref.region is not None for ref in body.subjects):  # every subject a region, or none
        errors.extend((f"{prefix}subjects.{i}.region", "give every subject a region, or none")
                      for i, ref in enumerate(body.subjects) if ref.region is None)
    for i, ref in enumerate(body.subjects):
        resolved = _resolve_one(session, svc, client_id, body.user_id, ref, f"{prefix}subjects.{i}", i, errors)
        if resolved is not None:
            identity.append(resolved)
    style = None
    if body.style is not None and body.style.reference is not None:
        style = _resolve_one(session, svc, client_id, body.user_id, body.style.reference, f"{prefix}style.reference",
                             0, errors)
    style_lora = None
    if body.params.style_lora is not None:
        style_lora = _resolve_style(session, client_id, body.params.style_lora, f"{prefix}params.style_lora", errors)
    check_webhook_url(body.webhook_url, f"{prefix}webhook_url", svc, errors)  # checked again at delivery (resolved)
    return Resolved(identity=identity, style=style, style_lora=style_lora)


def _resolve_style(session: Session, client_id: str, text: str, field: str,
                   errors: list[FieldError]) -> styles.StyleRef | None:
    """A style by name (its active version when the job runs) or name@version; it must be ready now."""
    try:
        ref = styles.parse_ref(text)
        styles.resolve(session, client_id, ref)
    except ValueError as exc:
        errors.append((field, str(exc)))
        return None
    except styles.StyleNotFound:
        errors.append((field, "unknown style, or no ready version of it"))
        return None
    return ref


def refuse_if_deleting(session: Session, client_id: str, user_ids: set[str]) -> None:
    for user_id in sorted(user_ids):
        deletion.lock_user(session, client_id, user_id, exclusive=False)
        if deletion.in_progress(session, client_id, user_id) is not None:
            raise ApiError(409, "Conflict", "this user's data is being deleted; submit again once the deletion "
                                            "has finished", code=ProblemCode.USER_BEING_DELETED)


@dataclass(frozen=True)
class Quota:
    """What the quota check read, with the client's row locked until the transaction ends; ``publishable`` uses it
    instead of reading again."""

    client: Client  # its ``paused_at``: a paused client's jobs wait in PostgreSQL
    # Per queue, how many of the client's queued jobs are published (the publish cap); None when the client has
    # no queued quota, so nothing was counted.
    published: Mapping[str, int] | None


def check_quota(session: Session, svc: Services, client_id: str, adding: int) -> Quota:
    """Lock the client's row and refuse (429) ``adding`` more queued jobs over its quota."""
    client = session.execute(select(Client).where(Client.id == client_id).with_for_update()).scalar_one()
    cap = client.max_queued_jobs if client.max_queued_jobs is not None else svc.settings.max_queued_jobs_per_client
    if not cap:
        return Quota(client, None)
    # One statement for two counts: the client's queued jobs (this quota) and, per queue, those of them already
    # published (the publish cap, used by ``publishable`` in this transaction instead of ``jobs.has_room``).
    by_queue = session.execute(
        select(Job.queue, func.count(), func.count(Job.published_at))
        .where(Job.client_id == client_id, Job.status == JobStatus.QUEUED.value)
        .group_by(Job.queue)
    ).all()
    queued = sum(count for _, count, _ in by_queue)
    if queued + adding > cap:
        raise ApiError(429, "Too Many Requests",
                       f"this client has {queued} queued jobs; at most {cap} may wait at once",
                       headers={"Retry-After": str(svc.settings.quota_retry_after_s)}, code=ProblemCode.QUOTA_EXCEEDED)
    return Quota(client, {queue: published for queue, _, published in by_queue})


def apply_variant(session: Session, svc: Services, client_id: str,
                  body: IllustrationRequest) -> tuple[IllustrationRequest, str]:
    """The user's A/B variant (``shared.experiments``) and the request with its overrides applied.

    An override changes only a parameter the request left at its default; a style the client does not have (or
    has no ready version of) is not applied, so an experiment never turns a valid request into a 422.
    """
    experiment = svc.settings.experiment
    variant = experiments.assign(experiment, client_id, body.user_id)
    if experiment is None or variant == experiments.CONTROL:
        return body, variant
    given = body.params.model_fields_set
    overrides = {name: value for name, value in experiment.overrides().items() if name not in given}
    if "style_lora" in overrides:
        try:
            styles.resolve(session, client_id, styles.parse_ref(overrides["style_lora"]))
        except (ValueError, styles.StyleNotFound):
            del overrides["style_lora"]
    if not overrides:
        return body, variant
    return body.model_copy(update={"params": body.params.model_copy(update=overrides)}), variant


def stored_request(body: IllustrationRequest, svc: Services, *, seed: int, priority: str, resolved: Resolved,
                   variant: str, batch_index: int | None) -> StoredRequest:
    """What the job row keeps of an accepted request (``shared.stored_request``): the request as given (without
    the metadata, webhook URL and deadline, which have columns), the seed drawn, the references resolved."""
    asked = body.model_dump(mode="json", exclude={"metadata", "webhook_url", "cancel_after"})
    asked["params"]["seed"] = seed
    experiment = svc.settings.experiment
    # One validation of the dumped request: about half the time of building the parts one by one.
    return StoredRequest.model_validate({
        **asked, "priority": priority, "resolved": resolved, "variant": variant,
        "experiment": experiment.name if experiment is not None else None, "batch_index": batch_index,
    })


@dataclass(frozen=True)
class Accepted:
    jobs: list[Job]
    quota: Quota | None  # None: no job waits in a queue (every one a cache hit), so the quota was not checked


def accept(session: Session, svc: Services, principal: Principal, bodies: Sequence[IllustrationRequest], *,
           batch_id: str | None = None, priorities: Sequence[str] | None = None,
           prefixes: Sequence[str] | None = None) -> Accepted:
    """Validate and write every request, or none (422 naming each bad field, 409, 429)."""
    errors: list[FieldError] = []
    counter = svc.token_counter()
    rows: list[Job] = []
    cached = cache.Submission(session, svc.settings, principal.client_id)  # hits, followers (shared.cache)
    for i, body in enumerate(bodies):
        prefix = prefixes[i] if prefixes is not None else ""
        # The A/B variant is decided before anything is written (and before a result cache looks at the request).
        body, variant = apply_variant(session, svc, principal.client_id, body)
        resolved = resolve_references(session, svc, principal.client_id, body, prefix, errors)
        if errors:
            continue
        priority = priorities[i] if priorities is not None else body.priority
        seed = body.params.seed if body.params.seed is not None else secrets.randbelow(limits.SEED_MAX + 1)
        built = build_prompt(body, counter, people_in_layout(resolved))
        queue = tasks.QUEUE_PREPARE if resolved.needs_preparing() else tasks.QUEUE_BY_PRIORITY[priority]
        request = stored_request(body, svc, seed=seed, priority=priority, resolved=resolved, variant=variant,
                                 batch_index=i if batch_id is not None else None)  # a batch keeps request order
        key, request = cache.request_key(session, svc.settings, principal.client_id, body, request, built.prompt)
        rows.append(cached.new_job(
            key, client_id=principal.client_id, user_id=body.user_id, priority=priority, queue=queue,
            request=request.model_dump(mode="json"), seed=seed, prompt_used=built.prompt,
            warnings=built.warnings + face_warnings(resolved),
            meta=body.metadata, webhook_url=body.webhook_url, cancel_after=body.cancel_after, batch_id=batch_id,
        ))
    if errors:
        raise validation_error(errors)
    refuse_if_deleting(session, principal.client_id, {body.user_id for body in bodies})
    queued = sum(row.status == JobStatus.QUEUED.value for row in rows)
    # Cache hits are born finished: they take no room in the queue.
    quota = check_quota(session, svc, principal.client_id, queued) if queued else None
    jobs.insert_new(session, rows)
    cached.accepted()
    return Accepted(rows, quota)


# --- 2. which to publish now -------------------------------------------------------------------------------------
def publishable(session: Session, svc: Services, rows: Sequence[Job], quota: Quota | None) -> list[tuple[str, str]]:
    """Which new jobs (of one client) to publish at once: over the client's publish cap (per queue) they wait in
    PostgreSQL and the relay publishes them as the client gets room (``ILLUSTRATIONS_CLIENT_PUBLISH_CAP``); a paused
    client's jobs wait until it is resumed (``illustrations ops pause-client``). ``quota``: what the quota check read
    in this transaction (the client's locked row, the published counts), which spares statements here."""
    rows = [row for row in rows if cache.needs_publish(row)]  # not a cache hit (finished), nor a follower
    if not rows:
        return []
    client = quota.client if quota is not None else session.get_one(Client, rows[0].client_id)
    if client.paused_at is not None:
        return []  # a paused client's jobs wait in PostgreSQL; the relay publishes them after resume-client
    cap = svc.settings.client_publish_cap
    counted = quota.published if quota is not None else None
    room: dict[str, bool] = {}
    chosen: list[tuple[str, str]] = []
    for row in rows:
        if row.queue not in room:
            room[row.queue] = (jobs.has_room(session, row.client_id, row.queue, cap) if counted is None
                               else cap <= 0 or counted.get(row.queue, 0) < cap)
        if room[row.queue]:
            chosen.append((row.id, row.queue))
    return chosen


# --- 3. the entry point, and the publish after the commit ---------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    """A create route's answer (202), recorded for its ``Idempotency-Key`` with the jobs: what a retry gets."""

    body: dict[str, Any]  # JSON
    headers: dict[str, str]


@dataclass(frozen=True)
class Created:
    """What ``create`` made: the route's answer, the new jobs, and the ids the broker took (``mark`` them)."""

    answer: Answer
    jobs: list[Job]
    published: list[str]


def create(svc: Services, principal: Principal, bodies: Sequence[IllustrationRequest],
           answer: Callable[[list[Job]], Answer], *, batch: Batch | None = None,
           priorities: Sequence[str] | None = None, prefixes: Sequence[str] | None = None) -> Created:
    """Accept ``bodies`` (all or none), record the route's ``answer`` to them, commit, and publish what may go now.

    ``batch``: a new batch row, written with its jobs. The recorded answer names the user whose data it shows (so
    deleting them removes it) when the jobs are of one user; one for several users names none (it holds only ids).
    The caller marks ``published`` (``mark``) at once, or once its answer is sent; until then, and if the mark is
    lost, the relay publishes them again (a twin message is dropped at the claim).
    """
    with svc.db.begin() as session:
        if batch is not None:
            session.add(batch)
            session.flush()
        accepted = accept(session, svc, principal, bodies, batch_id=batch.id if batch is not None else None,
                          priorities=priorities, prefixes=prefixes)
        made = answer(accepted.jobs)
        users = {job.user_id for job in accepted.jobs}
        record(session, 202, made.body, made.headers, user_id=next(iter(users)) if len(users) == 1 else None)
        queued = publishable(session, svc, accepted.jobs, accepted.quota)
    return Created(made, accepted.jobs, send(svc, queued))


def send(svc: Services, queued: Sequence[tuple[str, str]]) -> list[str]:
    """Publish each (job id, queue) after the commit: the ids whose message the broker took (``mark`` them next)."""
    return [job_id for job_id, queue in queued if svc.publisher.publish(job_id, queue)]


def mark(svc: Services, published: Sequence[str]) -> None:
    """The outbox mark of ``send``'s jobs, in a transaction of its own. It may run after the answer was sent
    (``Response.call_on_close``): nothing depends on it but the relay, which publishes an unmarked job again after
    ``ILLUSTRATIONS_RELAY_DELAY_S`` (a twin message is dropped at the claim), so a mark lost in a crash or an
    outage costs one extra message, never a job."""
    if not published:
        return
    try:
        with svc.db.begin() as session:
            for job_id in published:
                jobs.mark_published(session, job_id)
    except Exception as exc:
        log.warning("%d job(s) published but not marked (%s); the relay will publish them again", len(published),
                    type(exc).__name__)
