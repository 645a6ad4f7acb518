"""Image generation: model profiles (no torch), the tiny model maker and the engine.

Profiles are imported eagerly; the engine and the tiny maker load torch and diffusers (seconds), so their names are
resolved on first use: checking whether weights are present stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from worker.pipeline.profiles import ModelProfile, ModelsMissing, missing_files, read_revision, resolve_profile

if TYPE_CHECKING:
    from worker.pipeline.engine import Engine, GenerationRequest, Interrupted, validate_scale_dict
    from worker.pipeline.tiny import make_tiny, make_tiny_lora

_LAZY = {
    "Engine": "worker.pipeline.engine",
    "GenerationRequest": "worker.pipeline.engine",
    "Interrupted": "worker.pipeline.engine",
    "validate_scale_dict": "worker.pipeline.engine",
    "make_tiny": "worker.pipeline.tiny",
    "make_tiny_lora": "worker.pipeline.tiny",
}

__all__ = [
    "Engine",
    "GenerationRequest",
    "Interrupted",
    "ModelProfile",
    "ModelsMissing",
    "make_tiny",
    "make_tiny_lora",
    "missing_files",
    "read_revision",
    "resolve_profile",
    "validate_scale_dict",
]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
