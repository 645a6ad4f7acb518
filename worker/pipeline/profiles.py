"""Model profiles: where a profile's weights live, whether they are all there, and which revision they are.

Both profiles share one folder layout, so one loading path serves them::

    ROOT/base/                 a diffusers StableDiffusionXLPipeline folder (stabilityai/stable-diffusion-xl-base-1.0)
    ROOT/ip-adapter/           an h94/IP-Adapter folder: models/image_encoder and sdxl_models/*.safetensors
    ROOT/MODEL_REVISION        optional: one line naming the weights (written by `make_tiny` and the downloader)

This module imports neither torch nor diffusers: the CLI and health checks can answer "are the weights there?"
without loading a GPU stack, and the engine checks files before diffusers can turn a missing folder into a
misleading hub lookup.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

PROFILE_NAMES = ("tiny", "sdxl")
REVISION_FILE = "MODEL_REVISION"
# Files of a diffusers SDXL folder that `from_pretrained` needs, relative to base/.
BASE_FILES = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
)
# Files whose names and sizes stand for the weights when no MODEL_REVISION was written (no hashing of GBs).
_REVISION_WEIGHTS = (
    "unet/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder_2/model.safetensors",
)


@dataclass(frozen=True)
class ModelProfile:
    """Where one profile's weights are; the file names are the published ones of h94/IP-Adapter."""

    name: str
    root: Path
    base_dir: Path
    ip_adapter_dir: Path
    image_encoder_subfolder: str = "models/image_encoder"
    adapter_subfolder: str = "sdxl_models"
    identity_weight: str = "ip-adapter-plus-face_sdxl_vit-h.safetensors"
    style_weight: str = "ip-adapter_sdxl_vit-h.safetensors"

    @property
    def image_encoder_dir(self) -> Path:
        return self.ip_adapter_dir / self.image_encoder_subfolder

    @property
    def adapter_dir(self) -> Path:
        return self.ip_adapter_dir / self.adapter_subfolder


class ModelsMissing(Exception):
    """The profile's folder lacks files; the message says which, where, and how to get them."""

    def __init__(self, profile: ModelProfile, missing: list[str]) -> None:
        self.profile = profile
        self.missing = list(missing)
        shown = ", ".join(self.missing[:6]) + (f" and {len(self.missing) - 6} more" if len(self.missing) > 6 else "")
        super().__init__(f"model profile {profile.name!r}: {profile.root} lacks {shown}; {_fix_hint(profile)}")


def _fix_hint(profile: ModelProfile) -> str:
    if profile.name == "tiny":
        return f"run `illustrations models make-tiny {profile.root}`"
    return f"run `illustrations models download` on a host with network, or mount the weights at {profile.root}"


def resolve_profile(name: str, model_dir: Path) -> ModelProfile:
    """The profile ``name`` rooted at ``model_dir``; raise ValueError for an unknown name."""
    if name not in PROFILE_NAMES:
        raise ValueError(f"`name` must be one of {', '.join(PROFILE_NAMES)}, got {name!r}")
    root = Path(model_dir)
    return ModelProfile(name=name, root=root, base_dir=root / "base", ip_adapter_dir=root / "ip-adapter")


def _required(profile: ModelProfile) -> list[Path]:
    return [
        *(profile.base_dir / rel for rel in BASE_FILES),
        profile.image_encoder_dir / "config.json",
        profile.image_encoder_dir / "model.safetensors",
        profile.adapter_dir / profile.identity_weight,
        profile.adapter_dir / profile.style_weight,
    ]


def _shown(profile: ModelProfile, path: Path) -> str:
    """``path`` relative to the root when it lies under it (it does for resolved profiles), else in full."""
    return path.relative_to(profile.root).as_posix() if path.is_relative_to(profile.root) else str(path)


def missing_files(profile: ModelProfile) -> list[str]:
    """The required files that are absent, as paths relative to the profile root (empty when complete)."""
    return [_shown(profile, path) for path in _required(profile) if not path.is_file()]


def read_revision(profile: ModelProfile) -> str:
    """The weights' revision: MODEL_REVISION when present, else a cheap fingerprint of names and sizes.

    The fallback hashes model_index.json and the names and sizes of the large files, not their contents: it changes
    when a different model is mounted, costs a few stat calls, and never reads gigabytes at worker start.
    """
    marker = profile.root / REVISION_FILE
    if marker.is_file():
        text = marker.read_text(encoding="utf-8").strip()
        if text:
            return text.splitlines()[0].strip()
    digest = hashlib.sha256()
    index = profile.base_dir / "model_index.json"
    if index.is_file():
        digest.update(index.read_bytes())
    sized = [profile.base_dir / rel for rel in _REVISION_WEIGHTS]
    sized += [profile.image_encoder_dir / "model.safetensors"]
    sized += [profile.adapter_dir / profile.identity_weight, profile.adapter_dir / profile.style_weight]
    for path in sized:
        size = path.stat().st_size if path.is_file() else -1
        digest.update(f"{_shown(profile, path)}:{size}\n".encode())
    return f"{profile.name}-{digest.hexdigest()[:12]}"
