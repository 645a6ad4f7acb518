"""SQLAlchemy 2 typed models: clients, API keys, subjects, jobs (with their images), batches, user deletions,
styles (versions, training images), generation metrics, feedback, paused queues, webhook secrets, events and
attempts, result cache entries.

The job state machine that moves ``Job.status`` lives in ``shared.jobs``; nothing else updates it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shared.db import UTCDateTime, utcnow
from shared.states import JobStatus

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JsonType = JSON().with_variant(JSONB(), "postgresql")


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Client(Base):
    """A tenant: AutoBio itself, or another application. Nothing of one client is visible to another."""

    __tablename__ = "clients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())
    # Queued jobs this client may have before submissions get 429; None = the setting max_queued_jobs_per_client.
    max_queued_jobs: Mapped[int | None] = mapped_column(Integer)
    # Set by `illustrations ops pause-client`: its jobs are accepted and wait in PostgreSQL (nothing is published,
    # a message already in the broker is handed back at the claim) until `resume-client`.
    paused_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Where this client's webhook events go when neither the job, its batch nor the style version names a URL
    # (`illustrations webhooks url --name CLIENT URL`).
    webhook_url: Mapped[str | None] = mapped_column(Text)

    keys: Mapped[list[ApiKey]] = relationship(back_populates="client")


# What a key may do (``ApiKey.scopes``); the API checks them (``api.auth.require``), ``illustrations keys`` grants them.
# ``metrics`` reads /metrics and the quality numbers only; ``ops`` includes it (``api.keys.INCLUDED``).
SCOPES: Final = ("generate", "styles", "admin", "metrics", "ops")
DEFAULT_SCOPES: Final = ("generate",)


class ApiKey(Base):
    """An API key, stored only as its SHA-256 (keys are high-entropy: a slow hash would cost tens of ms a request)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    client: Mapped[Client] = relationship(back_populates="keys")


class Subject(Base):
    """A person whose reference photos keep them recognisable; versions hold the photos."""

    __tablename__ = "subjects"
    __table_args__ = (UniqueConstraint("client_id", "user_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())

    versions: Mapped[list[SubjectVersion]] = relationship(
        back_populates="subject", order_by="SubjectVersion.version", cascade="all, delete-orphan"
    )


class SubjectVersion(Base):
    __tablename__ = "subject_versions"

    subject_id: Mapped[str] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    storage_key: Mapped[str] = mapped_column(String(512))
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # embeddings are by image: who else has it
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())
    # The face detector's finding (``shared.faces``): the largest face's box [x0, y0, x1, y1] in fractions of the
    # photo (None: no face), how many faces, and which detector ran. All None: a version stored before detection
    # existed (the GPU worker detects at job time).
    face_box: Mapped[list[float] | None] = mapped_column(JsonType)
    face_count: Mapped[int | None] = mapped_column(Integer)
    face_detector: Mapped[str | None] = mapped_column(String(80))

    subject: Mapped[Subject] = relationship(back_populates="versions")


class Job(Base):
    """One illustration request and its whole life. ``status`` and ``attempt`` change only through ``shared.jobs``."""

    __tablename__ = "jobs"
    __mapper_args__ = {"eager_defaults": True}  # created_at comes back in the INSERT's RETURNING
    __table_args__ = (
        CheckConstraint(
            "status IN ({})".format(", ".join(f"'{s.value}'" for s in JobStatus)),
            name="status_known",
        ),
        CheckConstraint("attempt >= 0", name="attempt_not_negative"),
        Index("ix_jobs_client_created", "client_id", "created_at"),
        Index("ix_jobs_status_queue_created", "status", "queue", "created_at"),
        Index("ix_jobs_status_lease", "status", "lease_until"),
        Index("ix_jobs_client_user_created", "client_id", "user_id", "created_at"),
        # The per-client cap of the relay and the API counts a client's published queued jobs per queue.
        Index("ix_jobs_client_queue_status_published", "client_id", "queue", "status", "published_at"),
        # The result cache finds an in-flight job with the same key (``shared.cache``).
        Index("ix_jobs_client_cache_key", "client_id", "cache_key"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(255), index=True)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    priority: Mapped[str] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(64))
    # The validated request (prompt, params, style, memory context) with subjects resolved to stored versions:
    # ``shared.stored_request.StoredRequest`` is its shape, read and written through that model.
    request: Mapped[dict[str, Any]] = mapped_column(JsonType)
    seed: Mapped[int] = mapped_column(BigInteger)
    prompt_used: Mapped[str | None] = mapped_column(Text)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JsonType)
    warnings: Mapped[list[str]] = mapped_column(JsonType, default=list)
    cached: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    cancel_after: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The batch it came in (no foreign key: adding one would make SQLite copy the jobs table on upgrade).
    batch_id: Mapped[str | None] = mapped_column(String(36), index=True)
    # The result cache (``shared.cache``): sha256 of everything that determines the images (None: not cacheable).
    cache_key: Mapped[str | None] = mapped_column(String(64))
    # A follower (in-flight dedupe) finishes with this job instead of running; no foreign key, as for batch_id.
    follows_job_id: Mapped[str | None] = mapped_column(String(36), index=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Earliest time the relay publishes the job again (backoff after a transient fault); None = now.
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    worker: Mapped[str | None] = mapped_column(String(255))

    progress_step: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, float] | None] = mapped_column(JsonType)
    model: Mapped[dict[str, Any] | None] = mapped_column(JsonType)

    images: Mapped[list[JobImage]] = relationship(
        back_populates="job", order_by="JobImage.index", cascade="all, delete-orphan", lazy="selectin"
    )
    # Written with the row, never loaded with it (``shared.jobs`` adds the later transitions by statement).
    transitions: Mapped[list[JobTransition]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True, lazy="raise"
    )


class JobImage(Base):
    """One stored image of a finished job. Several jobs may share an object (``storage_key``): reference-counted."""

    __tablename__ = "job_images"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    storage_key: Mapped[str] = mapped_column(String(512), index=True)
    content_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)

    job: Mapped[Job] = relationship(back_populates="images")


class CacheEntry(Base):
    """The result cache's index: the job whose images answer requests with this key for this client.

    Written in the transaction where a keyed job succeeds (``shared.cache``); ``revision`` is the model revision the
    images were made with (a hit needs the revision current workers report). The row goes with its job (cascade),
    at the latest after ``cache_retention_s`` (upkeep).
    """

    __tablename__ = "cache_entries"

    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    revision: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow(), index=True)
    last_hit_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    hits: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class Batch(Base):
    """Jobs submitted together (``POST /v1/batches``): created atomically, counted per state."""

    __tablename__ = "batches"
    __mapper_args__ = {"eager_defaults": True}

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    webhook_url: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())


class UserDeletion(Base):
    """A request to delete everything of one user of a client (``DELETE /v1/users/{user_id}``) and its progress.

    While one is ``queued`` or ``running``, new submissions for that user get 409. ``parts`` counts what each part of
    the deletion registry (``shared.deletion``) removed. It holds the user id and nothing else of theirs.
    """

    __tablename__ = "user_deletions"
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed')", name="status_known"),
        Index("ix_user_deletions_client_user_status", "client_id", "user_id", "status"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    parts: Mapped[dict[str, int]] = mapped_column(JsonType, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    run_after: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Style(Base):
    """A named LoRA style of one client; its versions hold the weights, ``active_version`` is what ``name`` means.

    Versions come from ``illustrations styles import`` (a LoRA file, ready at once) or from training (queued, then
    running, then ready or failed). A version that becomes ready becomes active; a failed one leaves the previous.
    """

    __tablename__ = "styles"
    __table_args__ = (UniqueConstraint("client_id", "name"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    active_version: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())

    versions: Mapped[list[StyleVersion]] = relationship(
        back_populates="style", order_by="StyleVersion.version", cascade="all, delete-orphan"
    )


class StyleVersion(Base):
    """One version of a style: a LoRA file in storage (once ready) with the shape it was made with."""

    __tablename__ = "style_versions"
    __table_args__ = (
        CheckConstraint(
            "status IN ('queued', 'running', 'ready', 'failed', 'canceled')",
            name="status_known",
        ),
        Index("ix_style_versions_status_lease", "status", "lease_until"),
    )

    style_id: Mapped[str] = mapped_column(ForeignKey("styles.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(16))  # "import" or "training"
    base_profile: Mapped[str] = mapped_column(String(32))  # the model profile the LoRA was made for
    storage_key: Mapped[str | None] = mapped_column(String(512))
    sha256: Mapped[str | None] = mapped_column(String(64))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    rank: Mapped[int | None] = mapped_column(Integer)
    alpha: Mapped[float | None] = mapped_column(Float)
    params: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    error_code: Mapped[str | None] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    # --- A trained version is its own training job (``shared.training`` moves it; imports leave these empty) ---
    job_id: Mapped[str | None] = mapped_column(String(36), unique=True)  # what the queue message carries
    queue: Mapped[str | None] = mapped_column(String(64))  # illustrations.prepare, then illustrations.training
    attempt: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    requeues: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))  # SIGTERM give-backs
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    worker: Mapped[str | None] = mapped_column(String(255))
    cancel_reason: Mapped[str | None] = mapped_column(String(32))  # set: the running training stops, canceled
    progress_step: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)  # mean loss of the steps since the previous progress write
    checkpoint_step: Mapped[int | None] = mapped_column(Integer)  # the step of the checkpoint in storage
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # A user whose pictures it was trained on was deleted: their pictures are gone, the weights remain.
    training_data_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    style: Mapped[Style] = relationship(back_populates="versions")
    images: Mapped[list[TrainingImage]] = relationship(
        back_populates="style_version", order_by="TrainingImage.index", cascade="all, delete-orphan",
        passive_deletes=True,
    )


class TrainingImage(Base):
    """One captioned picture of a version's training set, and the user it came from (user deletion removes it).

    Uploads are stored at submit, as sent, at their ``storage_key``; pictures named by URL, subject or illustration
    are copied into the training set by the preparation step (``storage_key`` is empty until then), which also
    normalises every picture in place: ``sha256`` (and the size) is set once a picture is normalised, so the set
    never changes under a training.
    """

    __tablename__ = "training_images"
    __table_args__ = (
        ForeignKeyConstraint(["style_id", "version"], ["style_versions.style_id", "style_versions.version"],
                             ondelete="CASCADE"),
    )

    style_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(16))  # upload, url, subject, illustration
    source_ref: Mapped[str | None] = mapped_column(Text)  # the URL, subject id, or "<illustration id>/<index>"
    user_id: Mapped[str | None] = mapped_column(String(255), index=True)
    caption: Mapped[str] = mapped_column(Text)
    storage_key: Mapped[str | None] = mapped_column(String(512))
    sha256: Mapped[str | None] = mapped_column(String(64))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())

    style_version: Mapped[StyleVersion] = relationship(back_populates="images")


class GenerationMetric(Base):
    """One row per attempt that reached a GPU worker: where the time went and what ran.

    Written by the worker in the transaction that ends the attempt. ``user_id`` is kept so that deleting a user can
    remove their rows; ``job_id`` has no foreign key, so rows can outlive the jobs they describe for aggregates.
    """

    __tablename__ = "generation_metrics"
    __table_args__ = (Index("ix_generation_metrics_created", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), index=True)
    client_id: Mapped[str] = mapped_column(String(36))
    user_id: Mapped[str] = mapped_column(String(255), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # succeeded, failed, canceled, requeued, lost
    error_code: Mapped[str | None] = mapped_column(String(32))
    queue: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())
    # Seconds: waiting in the queue; references, embeddings and LoRA made ready; the pipeline call; store + finish.
    queue_wait_s: Mapped[float] = mapped_column(Float)
    load_s: Mapped[float | None] = mapped_column(Float)
    inference_s: Mapped[float | None] = mapped_column(Float)
    store_s: Mapped[float | None] = mapped_column(Float)
    total_s: Mapped[float] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    num_images: Mapped[int] = mapped_column(Integer)
    profile: Mapped[str | None] = mapped_column(String(32))
    revision: Mapped[str | None] = mapped_column(String(255))
    identity_refs: Mapped[int] = mapped_column(Integer)
    style_ref: Mapped[bool] = mapped_column(Boolean)
    embeddings_cached: Mapped[int] = mapped_column(Integer)  # references whose embedding came from the cache
    lora: Mapped[str | None] = mapped_column(String(120))  # name@version
    lora_resident: Mapped[bool | None] = mapped_column(Boolean)  # already in a slot (no load)
    worker: Mapped[str | None] = mapped_column(String(255))
    gpu: Mapped[str | None] = mapped_column(String(64))  # CUDA_VISIBLE_DEVICES of the worker process
    device: Mapped[str | None] = mapped_column(String(120))
    model_load_s: Mapped[float | None] = mapped_column(Float)  # the worker's one-time pipeline load
    peak_gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)  # null on CPU
    variant: Mapped[str | None] = mapped_column(String(16))  # the A/B variant the job ran with (request "variant")
    regions: Mapped[int | None] = mapped_column(Integer)  # people tied to a region by a mask (0: none masked)
    faces_found: Mapped[int | None] = mapped_column(Integer)  # identity references whose face was found and cropped
    quality: Mapped[str | None] = mapped_column(String(16))  # final or draft (request params.quality); null: final


class Feedback(Base):
    """A user's rating of a finished illustration (``POST /v1/illustrations/{id}/feedback``): one per job, the
    latest replaces the earlier. Profile and variant are copied from the job so quality numbers need no join and
    outlive the job; ``user_id`` is kept so that deleting a user removes their feedback (``shared.deletion``)."""

    __tablename__ = "feedback"
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        CheckConstraint("rating BETWEEN 1 AND 5", name="rating_range"),
        Index("ix_feedback_created", "created_at"),
        Index("ix_feedback_client_user", "client_id", "user_id"),
    )

    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(36))
    user_id: Mapped[str] = mapped_column(String(255))
    rating: Mapped[int] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    profile: Mapped[str | None] = mapped_column(String(32))
    variant: Mapped[str | None] = mapped_column(String(16))
    quality: Mapped[str | None] = mapped_column(String(16))  # final or draft; null: final
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())


class PausedQueue(Base):
    """A queue paused by ``illustrations ops pause QUEUE``: workers stop consuming it, and a worker that starts
    while it is paused does not consume it either (``worker.ops_control``). Messages wait in the broker."""

    __tablename__ = "paused_queues"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())


class JobTransition(Base):
    """The audit trail of a job: one row per state change, written in the transaction that made it.

    It is how "exactly one terminal transition per job" is checked, and what ops read to see why a job ran twice.
    """

    __tablename__ = "job_transitions"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    # An error or cancel code, or why a job went back to the queue (lease_expired, shutdown, a fault's code).
    reason: Mapped[str | None] = mapped_column(String(32))
    worker: Mapped[str | None] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())

    job: Mapped[Job] = relationship(back_populates="transitions")


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key``: held while its first request runs, then the response it got, kept >= 24 h."""

    __tablename__ = "idempotency_keys"

    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # SHA-256 of the method, route and canonical body: the same key with another request is a 422.
    request_hash: Mapped[str] = mapped_column(String(64))
    # The user the recorded answer is about (its body may hold their prompt): user deletion removes these rows.
    user_id: Mapped[str | None] = mapped_column(String(255), index=True)
    # Who holds the key while the first request runs (a random token), and until when.
    holder: Mapped[str | None] = mapped_column(String(36))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_headers: Mapped[dict[str, str] | None] = mapped_column(JsonType)
    response_body: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow(), index=True)


class WebhookSecret(Base):
    """A client's ``whsec_`` signing secret, encrypted at rest (Fernet, keys from settings). The newest one without
    ``expires_at`` is current; after a rotation the previous one keeps signing until its ``expires_at``."""

    __tablename__ = "webhook_secrets"
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (Index("ix_webhook_secrets_client_created", "client_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    encrypted: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookEvent(Base):
    """One event to deliver (``illustration.succeeded``, ``style.ready``, ...): recorded in the transaction that made
    its job or style version terminal, delivered by the CPU worker, retried on a schedule kept here.

    ``id`` is the ``webhook-id`` (``msg_`` + the job's id): every attempt sends the same one. ``payload`` is the body,
    rendered once at the first delivery and frozen, so every retry signs the same bytes. ``user_id`` is kept so that
    deleting a user removes their events (``shared.deletion``).
    """

    __tablename__ = "webhook_events"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'delivered', 'stopped', 'failed')", name="state_known"),
        Index("ix_webhook_events_state_next", "state", "next_attempt_at"),
        Index("ix_webhook_events_client_created", "client_id", "created_at"),
        Index("ix_webhook_events_client_user", "client_id", "user_id"),
        Index("ix_webhook_events_style", "style_id", "style_version"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    client_id: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    user_id: Mapped[str | None] = mapped_column(String(255))
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)  # an illustration job (no foreign key)
    style_id: Mapped[str | None] = mapped_column(String(36))  # or a style version
    style_version: Mapped[int | None] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending", server_default=text("'pending'"))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Sent to the webhooks queue and not yet answered: beat does not send it again before this.
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())  # delivered, stopped (410) or failed


class WebhookAttempt(Base):
    """One delivery attempt of a webhook event: when, the receiver's status code, the latency, what failed."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), server_default=utcnow())
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
