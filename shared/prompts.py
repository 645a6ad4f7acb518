"""Prompt building: the user's prompt first, then style preferences, deterministically.

Same request, same ``prompt_used``. Memory text is context for the prompt, never logged.
"""

from __future__ import annotations

from shared.schemas import IllustrationRequest


def build_prompt(request: IllustrationRequest) -> tuple[str, list[str]]:
    """The prompt sent to the model and the warnings about it."""
    parts = [request.prompt.strip()]
    style = request.style
    if style is not None:
        if style.artistic_style:
            parts.append(f"{style.artistic_style.strip()} style")
        if style.color_palette:
            parts.append(f"{style.color_palette.strip()} color palette")
        if style.mood:
            parts.append(f"{style.mood.strip()} mood")
    context = request.memory_context
    if context is not None and context.date is not None:
        parts.append(f"{(context.date.year // 10) * 10}s")
    return ", ".join(part for part in parts if part), []
