"""A/B experiments: variant ``b`` (other steps, guidance or LoRA) for a share of users, assigned stably.

One experiment at a time is configured (``ILLUSTRATIONS_EXPERIMENT``, JSON). A user's variant is a pure function
of the experiment's name, the client and the user: ``sha256("name:client_id:user_id")`` read as a number in
[0, 1), below ``share`` → ``b``. So a user sees the same variant on every request, every API process agrees without
shared state, and a new experiment (a new name) draws a fresh split. Without an experiment every job is ``a``.

The variant is decided at submit (``api.submit.accept``), before the job row is written: its overrides go into the
stored request's ``params`` and its name into its ``variant`` (and ``experiment``; ``shared.stored_request``),
which the result cache keys on and the worker copies into ``model.variant`` and the metrics row. An override
applies only to a parameter the request left at its default: a client that asks for 30 steps gets 30 steps.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from shared import limits

CONTROL: Final = "a"
TREATMENT: Final = "b"
OVERRIDABLE: Final = ("steps", "guidance_scale", "style_lora", "lora_scale")
# Not applied to a draft (``quality: draft``), which runs its few-step variant's own steps without guidance.
FINAL_ONLY: Final = ("steps", "guidance_scale")


class Experiment(BaseModel):
    """Variant ``b`` of an experiment: the params it changes and the share of users who get it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,40}$", description="Names the experiment (and seeds the split).")
    share: float = Field(ge=0.0, le=1.0, description="Fraction of users in variant b.")
    steps: int | None = Field(None, ge=limits.STEPS_MIN, le=limits.STEPS_MAX)
    guidance_scale: float | None = Field(None, ge=limits.GUIDANCE_MIN, le=limits.GUIDANCE_MAX)
    style_lora: str | None = Field(None, max_length=limits.NAME_MAX_CHARS + 12,
                                   description="A style (name or name@version); a client without it keeps its own.")
    lora_scale: float | None = Field(None, ge=0.0, le=limits.LORA_SCALE_MAX)

    def overrides(self) -> dict[str, Any]:
        return {name: value for name in OVERRIDABLE if (value := getattr(self, name)) is not None}


def bucket(experiment_name: str, client_id: str, user_id: str) -> float:
    """Where a user falls in [0, 1) for this experiment (stable across processes and restarts)."""
    digest = hashlib.sha256(f"{experiment_name}:{client_id}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(experiment: Experiment | None, client_id: str, user_id: str) -> str:
    """The variant of this user: ``b`` for ``share`` of users in an experiment, else ``a``."""
    if experiment is None or experiment.share <= 0.0:
        return CONTROL
    return TREATMENT if bucket(experiment.name, client_id, user_id) < experiment.share else CONTROL
