"""The request a job row keeps (``jobs.request``, JSON): what was asked, with every default resolved and every
reference resolved to a stored image (or, until the preparation step fetches it, a URL).

Written by the API at submit (``api.submit``), rewritten by the preparation step (URL references fetched and
stored) and by ``illustrations ops retry`` (``retry_of``); read by the GPU worker, the result cache, user deletion,
the ops page, feedback and batches. Writers call ``model_dump(mode="json")``; readers ``model_validate`` the column
and use attributes.

**Compatibility.** The JSON shape is the one the API has written since the first release (``tests/shared/
test_stored_request.py`` keeps a literal row of it), so every row already stored reads, without a migration. Keys
added since default when a row lacks them (``variant``, ``resolved.style_lora``, a person's ``face``/``face_count``/
``detector`` and ``region``: a row without a detector goes through the preparation step, which looks;
``params.quality``: final); the optional
labels
(``experiment``, ``batch_index``, ``retry_of``) and a stored reference's subject fields are left out when empty,
as the API always did. Keys this version does not know are kept (``extra="allow"``): nothing reads them, but a row
written by a newer API during a rolling deploy keeps them when this version's preparation step or ``ops retry``
writes it back. Stored values are not checked against ``shared.limits`` again: a limit tightened later must not
turn an accepted job into a failed one.

**Two views of one document.** ``StoredRequest`` is the whole request, which the GPU worker runs: the parameters
it cannot do without are required, so a row without them (a hand-made poison job) fails ``internal`` once.
``RequestOutline`` is what lists, reports, retries and user deletion read (labels and references), every part
optional: any row reads as an outline, so a malformed row never breaks the ops page, a retry or a deletion.

SQL reads two keys by JSON path, so they stay where they are: ``variant`` (the ops page's filter, the quality
report) and ``params.steps`` (a claim's progress total).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from shared import experiments, limits
from shared.regions import Region, as_region
from shared.styles import StyleRef


def _absent(value: object) -> bool:
    return value is None


def _final(value: object) -> bool:
    return value == limits.DEFAULT_QUALITY


class Stored(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


# --- references: what a job's people and style reference are, once accepted ----------------------------------------
class StoredRef(Stored):
    """An image in storage, which is all a GPU worker reads: a subject's version (resolved at submit, or stored by
    the preparation step from a URL), or a style reference the preparation step fetched (no subject fields)."""

    storage_key: str
    sha256: str
    subject_id: str | None = Field(None, exclude_if=_absent)
    name: str | None = Field(None, exclude_if=_absent)
    version: int | None = Field(None, exclude_if=_absent)
    # A person's photo (``shared.faces``): the face box in fractions (None: no face, the whole photo is used), how
    # many faces, the detector that looked. ``detector`` None: the photo was stored before faces were detected (the
    # GPU worker looks when the job runs).
    face: list[float] | None = Field(None, exclude_if=_absent)
    face_count: int | None = Field(None, exclude_if=_absent)
    detector: str | None = Field(None, exclude_if=_absent)
    region: list[float] | None = Field(None, exclude_if=_absent)  # as asked (``shared.regions``)

    @property
    def face_found(self) -> bool | None:
        """Whether a face was found (None: not looked for yet)."""
        return None if self.detector is None else self.face is not None


class UrlRef(Stored):
    """A photo given by URL: checked at submit, fetched by the preparation step (the job waits on its queue)."""

    index: int  # its position in the request (``subjects.{index}`` in warnings and errors)
    name: str | None  # the subject it becomes a version of (None: a style reference)
    image_url: str
    region: list[float] | None = Field(None, exclude_if=_absent)  # as asked (``shared.regions``)


def _reference_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "url" if "image_url" in value else "stored"
    return "url" if isinstance(value, UrlRef) else "stored"


Reference = Annotated[Annotated[StoredRef, Tag("stored")] | Annotated[UrlRef, Tag("url")],
                      Discriminator(_reference_kind)]


class Resolved(Stored):
    """The request's references as the API resolved them (``identity`` in the order given)."""

    identity: list[Reference] = Field(default_factory=list)
    style: Reference | None = None
    # A style by name (version None: the active version when the job runs) or pinned (a cacheable request, or
    # ``name@version``); checked again when the job runs (``style_not_found``).
    style_lora: StyleRef | None = None

    @property
    def references(self) -> list[StoredRef | UrlRef]:
        """The people, then the style reference."""
        return [*self.identity, *([self.style] if self.style is not None else [])]

    def needs_fetching(self) -> bool:
        """Whether a reference is still a URL (the job goes to the preparation step first)."""
        return any(isinstance(ref, UrlRef) for ref in self.references)

    def needs_preparing(self) -> bool:
        """Whether the job goes to the preparation step first: a reference is still a URL, or a person's photo was
        stored before faces were detected (the step looks for the face)."""
        return self.needs_fetching() or any(isinstance(ref, StoredRef) and ref.detector is None
                                            for ref in self.identity)

    def given_regions(self) -> list[Region | None]:
        """Each person's region as asked (``shared.regions.regions_used`` makes the masks' regions of them)."""
        return [as_region(ref.region) if ref.region is not None else None for ref in self.identity]


# --- the parameters -----------------------------------------------------------------------------------------------
class StoredParams(Stored):
    """Every parameter, defaults applied and the seed drawn (image i uses seed + i; the row's ``seed`` column)."""

    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int | None = None  # always written by the API
    num_images: int
    identity_scale: float
    style_scale: float
    content_scale: float
    style_lora: str | None = None  # as asked; ``Resolved.style_lora`` is what runs
    lora_scale: float = limits.DEFAULT_LORA_SCALE
    output_format: Literal["png", "jpeg", "webp"] = "png"
    # Written for a draft only: a final row reads and writes back as rows did before qualities (SQL coalesces).
    quality: Literal["final", "draft"] = Field(limits.DEFAULT_QUALITY, exclude_if=_final)


# --- the two views ----------------------------------------------------------------------------------------------
class RequestOutline(Stored):
    """The parts of a stored request that lists, reports, retries and user deletion read; any row reads as one."""

    resolved: Resolved = Field(default_factory=Resolved)
    variant: str | None = None  # the A/B variant decided at submit (``shared.experiments``); None: before them
    experiment: str | None = Field(None, exclude_if=_absent)  # the experiment's name, when one was running
    batch_index: int | None = Field(None, exclude_if=_absent)  # a batch lists its jobs in request order
    retry_of: str | None = Field(None, exclude_if=_absent)  # ``ops retry``: the failed job this one repeats

    @property
    def variant_or_control(self) -> str:
        """The variant the job runs as: a job from before experiments ran as the control."""
        return self.variant or experiments.CONTROL


class StoredRequest(RequestOutline):
    """The whole request as the GPU worker runs it (``IllustrationRequest`` without the metadata, webhook URL and
    deadline, which have columns of their own)."""

    user_id: str | None = None
    prompt: str
    negative_prompt: str | None = None
    # As given (validated at submit by ``IllustrationRequest``): the people, style and memory the prompt was built
    # from at submit (the worker runs ``prompt_used``; the references it reads are in ``resolved``). Kept as the
    # JSON objects they were, so no later change to the request's types or limits can make a stored row unreadable.
    subjects: list[dict[str, Any]] = Field(default_factory=list)
    style: dict[str, Any] | None = None
    memory_context: dict[str, Any] | None = None
    params: StoredParams
    priority: Literal["interactive", "batch"] = "interactive"
    on_subject_error: Literal["fail", "text_only"] = "fail"
