"""AutoBio's existing contract (``/api/illustrations``), in its camelCase names, and its translation onto v1.

The request is what AutoBio's backend already sends (the seed's ``IllustrationRequest``); unknown fields are ignored
(it may send more than we read), a numeric ``userId`` is taken as its decimal string, and a ``memoryContext.date`` that
is not an ISO date still gives its year to the era cue when it names one. Limits are v1's.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from shared import limits
from shared.schemas import HttpUrl, Name, Text200, UserId


def _number_as_text(value: Any) -> Any:
    """AutoBio may send a numeric user id: it is the same user as its decimal string."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class Camel(BaseModel):
    """A request part: read by AutoBio's names only."""

    model_config = ConfigDict(extra="ignore", alias_generator=to_camel, frozen=True)


class CamelOut(BaseModel):
    """An answer part: built by our names, written in AutoBio's (``model_dump(by_alias=True)``)."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, frozen=True,
                              json_schema_serialization_defaults_required=True)


class SubjectReference(Camel):
    name: Name
    image_url: HttpUrl | None = Field(None, description="Fetched before the job reaches a GPU; without it, the "
                                                        "user's stored subject of that name is used.")


class StylePreferences(Camel):
    artistic_style: Text200 | None = None
    color_palette: Text200 | None = None
    mood: Text200 | None = None


class LegacyMemoryContext(Camel):
    title: Text200 | None = None
    content: Annotated[str, StringConstraints(max_length=limits.MEMORY_CONTENT_MAX_CHARS)] | None = None
    date: Text200 | None = Field(None, description="ISO date preferred; otherwise a year in it is used, if any.")


class GenerateRequest(Camel):
    """``POST /api/illustrations/generate``."""

    prompt: Annotated[str, StringConstraints(min_length=1, max_length=limits.PROMPT_MAX_CHARS)]
    user_id: Annotated[UserId, BeforeValidator(_number_as_text, json_schema_input_type=UserId | int)]
    subject_references: list[SubjectReference] = Field(default_factory=list, max_length=limits.SUBJECTS_MAX)
    style_preferences: StylePreferences | None = None
    memory_context: LegacyMemoryContext | None = None


class ResultMetadata(CamelOut):
    model: str
    parameters: dict[str, Any]
    generation_time: float = Field(description="Seconds of generation (float).")


class GenerateResult(CamelOut):
    """200: the image is ready."""

    image_url: str
    generation_id: str
    metadata: ResultMetadata
    status: Literal["succeeded"] = "succeeded"


class GeneratePending(CamelOut):
    """202: not ready within the wait; poll ``statusUrl``."""

    generation_id: str
    status: Literal["queued", "running"]
    status_url: str


_YEAR = re.compile(r"\b(1[89]\d\d|20\d\d)\b")

# v1 field paths → AutoBio's, for 422s found after translation (subjects resolved at submit).
FIELD_NAMES = {"subjects": "subjectReferences", "user_id": "userId", "prompt": "prompt",
               "memory_context": "memoryContext", "style": "stylePreferences"}


def parse_date(value: str | None) -> dt.date | None:
    if not value:
        return None
    text = value.strip()
    try:
        return dt.date.fromisoformat(text[:10])
    except ValueError:
        pass
    match = _YEAR.search(text)
    return dt.date(int(match.group(1)), 1, 1) if match else None


def to_v1(request: GenerateRequest) -> dict[str, Any]:
    """The v1 request document (JSON-shaped, validated by ``IllustrationRequest`` afterwards)."""
    body: dict[str, Any] = {"user_id": str(request.user_id), "prompt": request.prompt}
    if request.subject_references:
        body["subjects"] = [
            {"name": ref.name, **({"image_url": ref.image_url} if ref.image_url else {})}
            for ref in request.subject_references
        ]
    if request.style_preferences is not None:
        body["style"] = request.style_preferences.model_dump(exclude_none=True)
    if request.memory_context is not None:
        context = request.memory_context
        memory: dict[str, Any] = {"title": context.title, "content": context.content}
        date = parse_date(context.date)
        if date is not None:
            memory["date"] = date.isoformat()
        body["memory_context"] = {key: value for key, value in memory.items() if value is not None}
    return body


def v1_field(field: str) -> str:
    """A v1 field path in AutoBio's names: ``subjects.0.image_url`` → ``subjectReferences.0.imageUrl``."""
    head, *rest = field.split(".")
    return ".".join([FIELD_NAMES.get(head, to_camel(head)), *(to_camel(part) for part in rest)])


# v1 field paths as messages name them (``subjects.0: the URL resolves to ...``, ``image_url needs a name``).
_V1_PATH = re.compile(r"\b(?:subjects|style\.reference|memory_context|user_id|image_url|subject_id)(?:\.\w+)*\b")


def v1_text(text: str) -> str:
    """A message or detail with every v1 field path in it written in AutoBio's names."""
    return _V1_PATH.sub(lambda match: v1_field(match.group(0)), text)


def v1_path_in(text: str) -> str | None:
    """The v1 field path a job's error message starts with (``subjects.0: ...``), if any."""
    match = _V1_PATH.match(text)
    return match.group(0) if match else None
