"""Pydantic models: the one source for request validation, response shapes and the OpenAPI document.

Requests are strict (no silent coercion of ``"1024"`` to ``1024``) and refuse unknown fields; every limit comes
from ``shared.limits``. Error messages name the field; none repeats what the user wrote.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from shared import limits, regions
from shared.errors import CancelReason, ErrorCode, FieldCode, ProblemCode

Text200 = Annotated[str, StringConstraints(max_length=limits.SHORT_TEXT_MAX_CHARS)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=limits.NAME_MAX_CHARS, strip_whitespace=True)]
UserId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=limits.USER_ID_MAX_CHARS, pattern=r"^[A-Za-z0-9._:@-]+$"),
]
Identifier = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]


def _http_url(value: str) -> str:
    if not value.lower().startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return value


HttpUrl = Annotated[str, StringConstraints(max_length=limits.URL_MAX_CHARS), AfterValidator(_http_url)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _region(values: list[float]) -> list[float]:
    return list(regions.check_region(values))


Region = Annotated[
    list[float],
    Field(min_length=4, max_length=4, json_schema_extra={"items": {"type": "number", "minimum": 0, "maximum": 1}},
          description="[x0, y0, x1, y1] in fractions of the width and height, x0 < x1 and y0 < y1, covering at "
                      f"least 1/{round(1 / limits.REGION_MIN_AREA)} of the picture."),
    AfterValidator(_region),
]


class SubjectRef(Strict):
    """A person in the picture: a stored subject by id, by name, or by name with a photo URL."""

    subject_id: Identifier | None = None
    name: Name | None = None
    image_url: HttpUrl | None = None
    region: Region | None = Field(None, description="Where this person goes (an attention mask ties their face to "
                                                    "it). Give every subject a region or none: without, two or "
                                                    "more people get equal columns left to right in the order "
                                                    "given, and one person the whole picture.")

    @model_validator(mode="after")
    def _one_way(self) -> SubjectRef:
        if (self.subject_id is None) == (self.name is None):
            raise ValueError("give either subject_id or name")
        if self.image_url is not None and self.name is None:
            raise ValueError("image_url needs a name")
        return self


class ImageRef(Strict):
    subject_id: Identifier | None = None
    image_url: HttpUrl | None = None

    @model_validator(mode="after")
    def _one_way(self) -> ImageRef:
        if (self.subject_id is None) == (self.image_url is None):
            raise ValueError("give either subject_id or image_url")
        return self


class Style(Strict):
    artistic_style: Text200 | None = None
    color_palette: Text200 | None = None
    mood: Text200 | None = None
    reference: ImageRef | None = None


class MemoryContext(Strict):
    title: Text200 | None = None
    content: Annotated[str, StringConstraints(max_length=limits.MEMORY_CONTENT_MAX_CHARS)] | None = None
    date: dt.date | None = None


class Params(Strict):
    width: int = Field(limits.DEFAULT_WIDTH, ge=limits.WIDTH_MIN, le=limits.WIDTH_MAX, multiple_of=limits.SIZE_MULTIPLE)
    height: int = Field(
        limits.DEFAULT_HEIGHT, ge=limits.HEIGHT_MIN, le=limits.HEIGHT_MAX, multiple_of=limits.SIZE_MULTIPLE
    )
    steps: int = Field(limits.DEFAULT_STEPS, ge=limits.STEPS_MIN, le=limits.STEPS_MAX,
                       description=f"Default {limits.DEFAULT_STEPS}; {limits.DEFAULT_DRAFT_STEPS} for a draft.")
    guidance_scale: float = Field(limits.DEFAULT_GUIDANCE, ge=limits.GUIDANCE_MIN, le=limits.GUIDANCE_MAX,
                                  description=f"Default {limits.DEFAULT_GUIDANCE}; {limits.DEFAULT_DRAFT_GUIDANCE} "
                                              "(no classifier-free guidance) for a draft.")
    seed: int | None = Field(None, ge=0, le=limits.SEED_MAX, description="Image i uses seed + i; drawn if absent.")
    num_images: int = Field(1, ge=limits.NUM_IMAGES_MIN, le=limits.NUM_IMAGES_MAX)
    identity_scale: float = Field(limits.DEFAULT_IDENTITY_SCALE, ge=0, le=limits.ADAPTER_SCALE_MAX)
    style_scale: float = Field(limits.DEFAULT_STYLE_SCALE, ge=0, le=limits.ADAPTER_SCALE_MAX)
    content_scale: float = Field(limits.DEFAULT_CONTENT_SCALE, ge=0, le=limits.ADAPTER_SCALE_MAX)
    style_lora: Annotated[str, StringConstraints(max_length=limits.NAME_MAX_CHARS + 12)] | None = None
    lora_scale: float = Field(limits.DEFAULT_LORA_SCALE, ge=0, le=limits.LORA_SCALE_MAX)
    output_format: Literal["png", "jpeg", "webp"] = "png"
    quality: Literal["final", "draft"] = Field(
        "final", description="draft: the model's few-step variant (a distilled LoRA and its scheduler, no "
                             "classifier-free guidance) for a quick preview with the same seed, people and style; "
                             "steps and guidance_scale default to its own. Draft and final are cached apart.")

    def for_quality(self) -> Params:
        """The params with the draft variant's steps and guidance where the request gave none (final: as they are)."""
        if self.quality != "draft":
            return self
        given = self.model_fields_set
        defaults = {"steps": limits.DEFAULT_DRAFT_STEPS, "guidance_scale": limits.DEFAULT_DRAFT_GUIDANCE}
        return self.model_copy(update={name: value for name, value in defaults.items() if name not in given})


class IllustrationRequest(Strict):
    """``POST /v1/illustrations``. Only ``user_id`` and ``prompt`` are required."""

    user_id: UserId
    prompt: Annotated[str, StringConstraints(min_length=1, max_length=limits.PROMPT_MAX_CHARS)]
    negative_prompt: Annotated[str, StringConstraints(max_length=limits.NEGATIVE_PROMPT_MAX_CHARS)] | None = None
    subjects: list[SubjectRef] = Field(default_factory=list, max_length=limits.SUBJECTS_MAX)
    style: Style | None = None
    memory_context: MemoryContext | None = None
    params: Params = Field(default_factory=Params)
    webhook_url: HttpUrl | None = None
    priority: Literal["interactive", "batch"] = "interactive"
    cancel_after: dt.datetime | None = None
    metadata: dict[str, Any] | None = None
    on_subject_error: Literal["fail", "text_only"] = "fail"

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("cancel_after")
    @classmethod
    def _aware(cls, value: dt.datetime | None) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must carry a time zone (RFC 3339, e.g. 2026-11-26T12:00:00Z)")
        return value

    @field_validator("metadata")
    @classmethod
    def _small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and len(json.dumps(value, separators=(",", ":"))) > limits.METADATA_MAX_BYTES:
            raise ValueError(f"must be at most {limits.METADATA_MAX_BYTES} bytes as JSON")
        return value


# --- Responses ------------------------------------------------------------------------------------------------------
class Out(BaseModel):
    """An answer: every member is always sent, so every one is required in the (serialization) schema."""

    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=True)


class Progress(Out):
    step: int
    total: int


class ImageOut(Out):
    url: str
    width: int
    height: int
    content_type: str
    sha256: str


JOB_ERROR_CODES: Final = [code.value for code in (*ErrorCode, *CancelReason)]


class JobErrorOut(Out):
    """Why a job (or a style version) failed or was canceled."""

    code: Annotated[str, WithJsonSchema({"type": "string", "enum": JOB_ERROR_CODES})] = Field(
        description="A closed list (`shared.errors`): a failure's `reference_unreachable`, `reference_blocked`, "
                    "`reference_invalid`, `style_not_found`, `out_of_memory`, `time_limit`, `worker_lost`, "
                    "`setup_failed`, `internal`; a cancel's `canceled_by_client`, `deadline`, `user_deleted`.")
    message: str


class Timings(Out):
    queued_s: float | None = None
    inference_s: float | None = None
    total_s: float | None = None


class LayoutOut(Out):
    """One person of a job, where they went (``region``) and whether a face was found in their photo."""

    subject_id: str | None = Field(description="null until the preparation step has stored a photo given by URL.")
    name: str | None
    region: list[float] = Field(description="[x0, y0, x1, y1] in fractions of the width and height.")
    face_found: bool | None = Field(description="null: not known yet (a URL not fetched yet, or a photo stored "
                                                "before faces were detected: the worker looks when the job runs).")


class JobOut(Out):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    user_id: str
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    progress: Progress | None
    queue_position: int | None
    attempts: int
    images: list[ImageOut]
    seed: int
    prompt_used: str | None
    warnings: list[str]
    error: JobErrorOut | None
    timings: Timings | None
    model: dict[str, Any] | None
    cached: bool
    metadata: dict[str, Any] | None
    priority: str
    links: dict[str, str]
    layout: list[LayoutOut] = Field(default_factory=list, description="The people in the order given.")


class FaceOut(Out):
    box: list[float] = Field(description="The face found, [x0, y0, x1, y1] in fractions of the photo.")


class SubjectOut(Out):
    id: str
    user_id: str
    name: str
    version: int
    width: int
    height: int
    sha256: str
    face: FaceOut | None = Field(description="The face the identity adapter sees (cropped with a margin); null when "
                                             "none was found (the whole photo is used) or not looked for yet.")
    warnings: list[str] = Field(default_factory=list)
    created_at: dt.datetime


class ProblemField(Out):
    field: str = Field(description="The field, parameter or header at fault (a dotted path: `subjects.0.name`).")
    code: FieldCode = Field(description="What is wrong with it: a stable name to branch on (the message is for "
                                        "people and may change).")
    message: str


class Problem(Out):
    """An error answer, `application/problem+json` (RFC 9457)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    code: ProblemCode = Field(description="What went wrong: a stable name to branch on (never the message text).")
    instance: str | None = Field(None, description="The request's id, as in its `X-Request-ID` header (quote it "
                                                   "when reporting a problem).")
    errors: list[ProblemField] = Field(default_factory=list)


# --- Lists, cancel, subjects by URL, batches, deletion ----------------------------------------------------------------
JobState = Literal["queued", "running", "succeeded", "failed", "canceled"]
Cursor = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Query(BaseModel):
    """Query strings: strings in, so parsed laxly ("20" is 20); unknown parameters are refused like body fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OwnerQuery(Query):
    user_id: UserId | None = Field(None, description="Answer 404 unless the resource belongs to this user.")


class JobListQuery(Query):
    user_id: UserId | None = Field(None, description="Only this user's jobs (default: the whole client).")
    status: JobState | None = None
    limit: int = Field(limits.LIST_LIMIT_DEFAULT, ge=1, le=limits.LIST_LIMIT_MAX)
    cursor: Cursor | None = Field(None, description="next_cursor of the previous page.")


class SubjectListQuery(Query):
    user_id: UserId | None = Field(None, description="Only this user's subjects (default: the whole client).")
    limit: int = Field(limits.LIST_LIMIT_DEFAULT, ge=1, le=limits.LIST_LIMIT_MAX)
    cursor: Cursor | None = Field(None, description="next_cursor of the previous page.")


class CancelRequest(Strict):
    """``POST /v1/illustrations/{id}/cancel`` (the body is optional)."""

    user_id: UserId | None = Field(None, description="Answer 404 unless the job belongs to this user.")


class JobList(Out):
    items: list[JobOut]
    next_cursor: str | None


class SubjectUrlRequest(Strict):
    """``POST /v1/subjects`` as JSON: the photo is fetched from ``image_url`` (safe fetcher) and stored."""

    user_id: UserId
    name: Name
    image_url: HttpUrl
    if_exists: Literal["replace", "error"] = "replace"


class SubjectUpload(BaseModel):
    """``POST /v1/subjects`` as multipart/form-data (documentation of the form; ``image`` is the file)."""

    model_config = ConfigDict(extra="forbid")

    user_id: UserId
    name: Name
    if_exists: Literal["replace", "error"] = "replace"
    image: bytes = Field(
        json_schema_extra={"contentMediaType": "application/octet-stream"},
        description=f"PNG, JPEG or WebP; at most {limits.UPLOAD_MAX_BYTES} bytes and {limits.UPLOAD_MAX_PIXELS} "
        "pixels.",
    )


class SubjectList(Out):
    items: list[SubjectOut]
    next_cursor: str | None


class BatchRequest(Strict):
    """``POST /v1/batches``: every request is validated first; all jobs are created in one transaction, or none."""

    requests: list[IllustrationRequest] = Field(min_length=1, max_length=limits.BATCH_MAX)
    webhook_url: HttpUrl | None = None


class BatchCreated(Out):
    id: str
    job_ids: list[str]
    links: dict[str, str]


class BatchOut(Out):
    id: str
    created_at: dt.datetime
    counts: dict[str, int] = Field(description="Jobs per state (every state present, 0 when none).")
    jobs: list[JobOut]
    links: dict[str, str]


class DeletionOut(Out):
    id: str
    user_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    parts: dict[str, int] = Field(description="What each part of the deletion removed (rows).")
    created_at: dt.datetime
    finished_at: dt.datetime | None
    links: dict[str, str]


# --- Styles (LoRA training) -------------------------------------------------------------------------------------------
StyleName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=limits.NAME_MAX_CHARS, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$"),
]
Caption = Annotated[str, StringConstraints(max_length=limits.CAPTION_MAX_CHARS)]


class TrainingParams(Strict):
    """How a style version is trained; every field has a default."""

    rank: int = Field(limits.DEFAULT_TRAINING_RANK, ge=limits.TRAINING_RANK_MIN, le=limits.TRAINING_RANK_MAX,
                      description="LoRA rank (size of the adapter).")
    alpha: int | None = Field(None, ge=1, le=limits.TRAINING_ALPHA_MAX,
                                description="LoRA alpha (the weights are scaled by alpha / rank); default: rank.")
    steps: int = Field(limits.DEFAULT_TRAINING_STEPS, ge=limits.TRAINING_STEPS_MIN, le=limits.TRAINING_STEPS_MAX,
                       description="Optimizer steps.")
    learning_rate: float = Field(limits.DEFAULT_TRAINING_LEARNING_RATE, ge=limits.TRAINING_LEARNING_RATE_MIN,
                                 le=limits.TRAINING_LEARNING_RATE_MAX, description="AdamW learning rate (constant).")
    resolution: int = Field(limits.DEFAULT_TRAINING_RESOLUTION, ge=limits.TRAINING_RESOLUTION_MIN,
                            le=limits.TRAINING_RESOLUTION_MAX, multiple_of=limits.SIZE_MULTIPLE,
                            description="Pictures are scaled (shorter side) and centre-cropped to this square.")
    seed: int | None = Field(None, ge=0, le=limits.SEED_MAX, description="Drawn and recorded if absent.")
    batch_size: int = Field(1, ge=1, le=limits.TRAINING_BATCH_MAX, description="Pictures per step.")


class TrainingImageRef(Strict):
    """A picture of the training set: a URL (fetched safely), a stored subject, or an image of an illustration."""

    image_url: HttpUrl | None = None
    subject_id: Identifier | None = None
    illustration_id: Identifier | None = None
    index: int | None = Field(None, ge=0, le=limits.NUM_IMAGES_MAX - 1,
                              description="Which image of the illustration (from 0).")

    @model_validator(mode="after")
    def _one_way(self) -> TrainingImageRef:
        given = [value is not None for value in (self.image_url, self.subject_id, self.illustration_id)]
        if sum(given) != 1:
            raise ValueError("give exactly one of image_url, subject_id, or illustration_id with index")
        if (self.illustration_id is None) != (self.index is None):
            raise ValueError("illustration_id and index go together")
        return self


def _count_matches(captions: list[str], info: ValidationInfo) -> list[str]:
    images = info.data.get("images")
    if images is not None and len(captions) != len(images):
        raise ValueError(f"give one caption per image: {len(images)} images, {len(captions)} captions")
    return captions


class StyleTrainingRequest(Strict):
    """``POST /v1/styles`` as JSON: a new version of style ``name`` trained on these captioned pictures."""

    name: StyleName
    images: list[TrainingImageRef] = Field(min_length=limits.TRAINING_IMAGES_MIN,
                                           max_length=limits.TRAINING_IMAGES_MAX)
    captions: Annotated[list[Caption], AfterValidator(_count_matches)] = Field(
        max_length=limits.TRAINING_IMAGES_MAX, description="One per image, in the same order.")
    params: TrainingParams = Field(default_factory=TrainingParams)
    webhook_url: HttpUrl | None = None
    user_id: UserId | None = Field(None, description="The user the pictures given by URL come from, if any "
                                                     "(subjects and illustrations name their own).")


class StyleUpload(BaseModel):
    """``POST /v1/styles`` as multipart/form-data (documentation of the form; ``image`` repeats, as ``caption``)."""

    model_config = ConfigDict(extra="forbid")

    name: StyleName
    image: list[bytes] = Field(
        min_length=limits.TRAINING_IMAGES_MIN, max_length=limits.TRAINING_IMAGES_MAX,
        json_schema_extra={"items": {"type": "string", "contentMediaType": "application/octet-stream"}},
        description=f"PNG, JPEG or WebP files; each at most {limits.UPLOAD_MAX_BYTES} bytes and "
        f"{limits.UPLOAD_MAX_PIXELS} pixels, and the whole body at most {limits.REQUEST_BODY_MAX_BYTES} bytes.",
    )
    caption: list[Caption] = Field(max_length=limits.TRAINING_IMAGES_MAX, description="One per image, in order.")
    params: str | None = Field(None, description="TrainingParams as a JSON object.")
    webhook_url: HttpUrl | None = None
    user_id: UserId | None = Field(None, description="The user the uploaded pictures come from, if any.")


class StyleCreated(Out):
    name: str
    version: int
    status: Literal["queued"]
    job_id: str
    links: dict[str, str]


StyleState = Literal["queued", "running", "ready", "failed", "canceled"]


class StyleVersionOut(Out):
    version: int
    status: StyleState
    source: str = Field(description="training, or import (a LoRA file added with `illustrations styles import`).")
    progress: Progress | None
    loss: float | None = Field(description="Mean training loss of the steps since the previous progress update.")
    error: JobErrorOut | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    params: dict[str, Any] | None
    job_id: str | None
    attempts: int
    rank: int | None
    alpha: float | None
    base_profile: str
    images: int = Field(description="Pictures in its training set.")
    training_data_deleted_at: dt.datetime | None = Field(
        description="When pictures of a deleted user were removed from its training set (the weights remain).")


class StyleOut(Out):
    name: str
    active_version: int | None
    created_at: dt.datetime
    versions: list[StyleVersionOut]
    links: dict[str, str]


class StyleList(Out):
    items: list[StyleOut]
    next_cursor: str | None


class StyleListQuery(Query):
    limit: int = Field(limits.LIST_LIMIT_DEFAULT, ge=1, le=limits.LIST_LIMIT_MAX)
    cursor: Cursor | None = Field(None, description="next_cursor of the previous page.")


# --- Operations: feedback and quality numbers -------------------------------------------------------------------------
class FeedbackRequest(Strict):
    """``POST /v1/illustrations/{id}/feedback``: a rating of a succeeded job (the latest replaces an earlier one)."""

    rating: int = Field(ge=limits.FEEDBACK_RATING_MIN, le=limits.FEEDBACK_RATING_MAX)
    comment: Annotated[str, StringConstraints(max_length=limits.FEEDBACK_COMMENT_MAX_CHARS)] | None = None
    user_id: UserId | None = Field(None, description="Answer 404 unless the job belongs to this user.")


class FeedbackOut(Out):
    job_id: str
    user_id: str
    rating: int
    comment: str | None
    created_at: dt.datetime


QualityRange = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{0,3}[hd]$")]


class QualityQuery(Query):
    range: QualityRange = Field("7d", description="How far back: N hours (`24h`) or N days (`7d`), at most "
                                                  f"{limits.QUALITY_RANGE_MAX_DAYS} days.")


class Percentiles(Out):
    p50: float | None
    p95: float | None


class FeedbackSummary(Out):
    count: int
    mean_rating: float | None


class QualityGroup(Out):
    profile: str = Field(description="Model profile (`none`: jobs that ended before reaching a worker).")
    variant: str
    quality: str = Field(description="final or draft (`quality` of the request).")
    jobs: int = Field(description="Jobs finished in the range.")
    succeeded: int
    failed: int
    canceled: int
    success_rate: float | None = Field(description="succeeded / (succeeded + failed); cancels are not counted.")
    failures: dict[str, int] = Field(description="Failed jobs by error code.")
    queue_wait_s: Percentiles = Field(description="Time from submit to a worker's claim (succeeded attempts).")
    generation_s: Percentiles = Field(description="Time on the worker: load, inference, store (succeeded attempts).")
    inference_s: Percentiles = Field(description="The pipeline call alone (succeeded attempts).")
    feedback: FeedbackSummary


class QualityOut(Out):
    range: str
    since: dt.datetime
    until: dt.datetime
    groups: list[QualityGroup]


# --- Webhooks (Standard Webhooks) -------------------------------------------------------------------------------------
WebhookEventId = Annotated[str, StringConstraints(min_length=1, max_length=40, pattern=r"^msg_[A-Za-z0-9]+$")]


class WebhookDeliveryQuery(Query):
    job_id: Identifier | None = Field(None, description="Only the deliveries of this illustration job.")
    style: StyleName | None = Field(None, description="Only the deliveries of this style's versions (needs the "
                                                      "`styles` scope too).")
    limit: int = Field(limits.LIST_LIMIT_DEFAULT, ge=1, le=limits.LIST_LIMIT_MAX)
    cursor: Cursor | None = Field(None, description="next_cursor of the previous page.")

    @field_validator("style")
    @classmethod
    def _one_filter(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("job_id") is not None:
            raise ValueError("give job_id or style, not both")
        return value


class WebhookAttemptOut(Out):
    attempt: int
    at: dt.datetime
    status_code: int | None = Field(description="The receiver's answer; null when none came (refused, timed out).")
    latency_ms: float | None
    error: str | None


class WebhookDeliveryOut(Out):
    """One event (one `webhook-id`) and every attempt to deliver it, oldest first."""

    id: str = Field(description="The `webhook-id` of every attempt; `POST .../{id}/retry` sends it again.")
    type: Literal["illustration.succeeded", "illustration.failed", "illustration.canceled", "style.ready",
                  "style.failed"]
    url: str
    status: Literal["pending", "delivered", "stopped", "failed"] = Field(
        description="pending (will be tried at next_attempt_at), delivered (2xx), stopped (410), failed (the "
                    "retry schedule ran out).")
    job_id: str | None
    style: str | None
    style_version: int | None
    created_at: dt.datetime
    next_attempt_at: dt.datetime | None
    delivered_at: dt.datetime | None
    attempts: list[WebhookAttemptOut]


class WebhookDeliveryList(Out):
    items: list[WebhookDeliveryOut]
    next_cursor: str | None


# --- Webhook event bodies (what a receiver gets; the OpenAPI document's `webhooks`) -----------------------------
class StyleVersionEventData(StyleVersionOut):
    """A style version as ``GET /v1/styles/{name}`` lists it, with the style's ``name``."""

    name: str = Field(description="The style's name.")


class _Event(Out):
    timestamp: dt.datetime = Field(description="When the event happened (RFC 3339, UTC).")


class IllustrationSucceededEvent(_Event):
    """A job succeeded: ``data`` is the job as ``GET /v1/illustrations/{id}`` answers it."""

    type: Literal["illustration.succeeded"]
    data: JobOut


class IllustrationFailedEvent(_Event):
    """A job failed: ``data.error.code`` says why."""

    type: Literal["illustration.failed"]
    data: JobOut


class IllustrationCanceledEvent(_Event):
    """A job was canceled (by the client, its deadline, or its user's deletion: ``data.error.code``)."""

    type: Literal["illustration.canceled"]
    data: JobOut


class StyleReadyEvent(_Event):
    """A style version finished training and is now the style's active version."""

    type: Literal["style.ready"]
    data: StyleVersionEventData


class StyleFailedEvent(_Event):
    """A style version's training failed (the previous version stays active)."""

    type: Literal["style.failed"]
    data: StyleVersionEventData


WEBHOOK_EVENTS: Final[dict[str, type[_Event]]] = {
    "illustration.succeeded": IllustrationSucceededEvent,
    "illustration.failed": IllustrationFailedEvent,
    "illustration.canceled": IllustrationCanceledEvent,
    "style.ready": StyleReadyEvent,
    "style.failed": StyleFailedEvent,
}
WebhookEventBody = Annotated[
    IllustrationSucceededEvent | IllustrationFailedEvent | IllustrationCanceledEvent | StyleReadyEvent
    | StyleFailedEvent,
    Field(discriminator="type"),
]
