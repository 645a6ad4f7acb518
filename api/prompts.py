"""Prompt building: the user's prompt first, then style preferences and memory context, deterministically.

Parts, in priority order (a higher one is never dropped for a lower one):

1. the user's ``prompt`` (always kept; a warning says when it alone overflows CLIP's window),
2. with two or more people, their names left to right as the layout places them ("grandma on the left, dad on the
   right"; ``shared.regions``): each person's attention mask ties a face to a region, and the text names who stands
   there. One person's prompt is the user's alone, as before regions existed.
3. ``style.artistic_style`` ("watercolor" → "watercolor style"),
4. the era cue of ``memory_context.date`` ("1965-07-14" → "1960s, sixties fashion and cars, period-accurate
   clothing and setting"),
5. ``style.mood`` as a mood phrase ("nostalgic" → "nostalgic mood, soft golden light"),
6. ``style.color_palette`` ("warm sepia" → "warm sepia color palette"),
7. ``memory_context.title``.

CLIP reads 77 tokens including its start and end markers: parts are added in order while the joined prompt fits
in 75; the first part that does not fit and every part after it are left out, and ``warnings`` names them (by
field, never by their text). ``memory_context.content`` is context kept with the job, not prompt text: memoir
prose is long and CLIP would only read its first words. Same request and tokenizer, same ``prompt_used``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from api.clip_tokens import TokenCounter
from shared import limits, regions
from shared.schemas import IllustrationRequest
from shared.stored_request import Resolved

BUDGET: Final = limits.CLIP_MAX_TOKENS - 2  # start and end markers
SEPARATOR: Final = ", "

ERA_CUES: Final[dict[int, str]] = {
    1900: "Edwardian era",
    1910: "1910s period detail",
    1920: "roaring twenties",
    1930: "Great Depression era",
    1940: "wartime forties",
    1950: "fifties mid-century style",
    1960: "sixties fashion and cars",
    1970: "seventies fashion and interiors",
    1980: "eighties fashion",
    1990: "nineties fashion",
    2000: "turn of the millennium",
    2010: "2010s",
    2020: "2020s",
}
MOOD_PHRASES: Final[dict[str, str]] = {
    "nostalgic": "nostalgic mood, soft golden light",
    "joyful": "joyful mood, bright cheerful light",
    "happy": "happy mood, bright cheerful light",
    "peaceful": "peaceful mood, calm gentle light",
    "melancholic": "melancholic mood, muted light",
    "bittersweet": "bittersweet mood, soft muted light",
    "playful": "playful mood, lively colors",
    "romantic": "romantic mood, warm soft light",
}


@dataclass(frozen=True)
class BuiltPrompt:
    prompt: str
    warnings: list[str]
    tokens: int
    exact: bool


def era_cue(date: dt.date) -> str:
    decade = (date.year // 10) * 10
    if decade < 1900:
        return "19th century, antique photograph look, period-accurate clothing and setting"
    cue = ERA_CUES.get(decade, f"{decade}s")
    head = cue if cue.startswith(f"{decade}s") else f"{decade}s, {cue}"
    return f"{head}, period-accurate clothing and setting"


def _clean(text: str) -> str:
    return " ".join(text.split()).strip(" ,")


def people_in_layout(resolved: Resolved) -> list[str]:
    """The people left to right as the layout places them, each with where they are ("grandma on the left"); none
    for fewer than two people, or when one of them has no name."""
    used = regions.regions_used(resolved.given_regions())
    names = [_clean(ref.name or "") for ref in resolved.identity]
    if used is None or not all(names):
        return []
    return [f"{names[index]} {where}" for index, where in regions.left_to_right(used)]


def prompt_parts(request: IllustrationRequest, people: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(field, phrase) in priority order; empty preferences give no part. ``people``: ``people_in_layout``."""
    parts = [("prompt", _clean(request.prompt))]
    if people:
        parts.append(("subjects", SEPARATOR.join(people)))
    style, context = request.style, request.memory_context
    if style is not None and style.artistic_style and _clean(style.artistic_style):
        artistic = _clean(style.artistic_style)
        parts.append(("style.artistic_style", artistic if artistic.lower().endswith("style") else f"{artistic} style"))
    if context is not None and context.date is not None:
        parts.append(("memory_context.date", era_cue(context.date)))
    if style is not None and style.mood and _clean(style.mood):
        mood = _clean(style.mood)
        parts.append(("style.mood", MOOD_PHRASES.get(mood.lower(), f"{mood} mood")))
    if style is not None and style.color_palette and _clean(style.color_palette):
        parts.append(("style.color_palette", f"{_clean(style.color_palette)} color palette"))
    if context is not None and context.title and _clean(context.title):
        parts.append(("memory_context.title", _clean(context.title)))
    return parts


def build_prompt(request: IllustrationRequest, counter: TokenCounter, people: Sequence[str] = ()) -> BuiltPrompt:
    """The prompt sent to the model and the warnings about it (``people``: ``people_in_layout``)."""
    parts = prompt_parts(request, people)
    warnings: list[str] = []
    kept = [parts[0][1]]
    tokens = counter.count(kept[0])
    left_out: list[str] = []
    if tokens > BUDGET:
        warnings.append(f"prompt: {tokens} CLIP tokens, the model reads the first {BUDGET}")
        left_out = [name for name, _ in parts[1:]]
    else:
        for index, (_field, phrase) in enumerate(parts[1:], start=1):
            count = counter.count(SEPARATOR.join([*kept, phrase]))
            if count > BUDGET:
                left_out = [name for name, _ in parts[index:]]
                break
            kept.append(phrase)
            tokens = count
    if left_out:
        warnings.append(
            f"prompt: left out to fit CLIP's {limits.CLIP_MAX_TOKENS}-token window: {', '.join(left_out)}"
            + ("" if counter.exact else " (token counts estimated: no tokenizer files on the API host)")
        )
    if request.negative_prompt and counter.count(request.negative_prompt) > BUDGET:
        warnings.append(f"negative_prompt: longer than {BUDGET} CLIP tokens, the model reads the first {BUDGET}")
    return BuiltPrompt(SEPARATOR.join(kept), warnings, tokens, counter.exact)
