"""Model profiles: where a profile's weights live, whether they are all there, and which revision they are.

Both profiles share one folder layout, so one loading path serves them::

    ROOT/base/                 a diffusers StableDiffusionXLPipeline folder (stabilityai/stable-diffusion-xl-base-1.0)
    ROOT/ip-adapter/           an h94/IP-Adapter folder: models/image_encoder and sdxl_models/*.safetensors
    ROOT/draft/                optional: the few-step distillation LoRA of ``quality: draft`` (``DRAFT``)
    ROOT/MODEL_REVISION        optional: one line naming the weights (written by `make_tiny` and the downloader)

``sdxl`` may instead be found in the Hugging Face cache (``HF_HUB_CACHE``), as ``huggingface-cli download`` or
``illustrations models download --cache`` leave it: ``sdxl_from_hf_cache`` looks there without any network call.
The files each repository must provide are listed once (``REPOSITORIES``): the downloader fetches exactly them and
``missing_files`` checks exactly them.

This module imports neither torch nor diffusers: the CLI and health checks can answer "are the weights there?"
without loading a GPU stack, and the engine checks files before diffusers can turn a missing folder into a
misleading hub lookup.
"""

from __future__ import annotations

import hashlib
import logging
import re
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
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
    "tokenizer_2/tokenizer_config.json",  # tokenizer_2 pads with "!": said here, not in the vocabulary
    "tokenizer_2/special_tokens_map.json",
)
IMAGE_ENCODER_SUBFOLDER = "models/image_encoder"
ADAPTER_SUBFOLDER = "sdxl_models"
IDENTITY_WEIGHT = "ip-adapter-plus-face_sdxl_vit-h.safetensors"
STYLE_WEIGHT = "ip-adapter_sdxl_vit-h.safetensors"
# Files of an h94/IP-Adapter folder that the engine needs, relative to ip-adapter/.
IP_ADAPTER_FILES = (
    f"{IMAGE_ENCODER_SUBFOLDER}/config.json",
    f"{IMAGE_ENCODER_SUBFOLDER}/model.safetensors",
    f"{ADAPTER_SUBFOLDER}/{IDENTITY_WEIGHT}",
    f"{ADAPTER_SUBFOLDER}/{STYLE_WEIGHT}",
)


@dataclass(frozen=True)
class Repository:
    """A Hugging Face repository, the profile folder it fills, and the files taken from it."""

    repo_id: str
    folder: str  # base or ip-adapter
    files: tuple[str, ...]


REPOSITORIES = (
    Repository("stabilityai/stable-diffusion-xl-base-1.0", "base", BASE_FILES),
    Repository("h94/IP-Adapter", "ip-adapter", IP_ADAPTER_FILES),
)


@dataclass(frozen=True)
class DraftVariant:
    """The few-step variant of a profile (``quality: draft``): a distillation LoRA kept resident beside the style
    slots, the scheduler its model card asks for, no classifier-free guidance and its own step count.

    SDXL-Lightning's 4-step LoRA (ByteDance/SDXL-Lightning, CreativeML Open RAIL++-M like SDXL itself): Euler with
    ``timestep_spacing="trailing"``, 4 steps, guidance 0 (the card's example). Chosen over DMD2 (non-commercial
    weights) and LCM-LoRA (8 steps for a comparable picture). The file is optional: a worker without it runs final
    jobs and answers draft jobs ``setup_failed`` naming it. ``tiny`` has a random LoRA in the same (kohya) layout.
    """

    repo_id: str
    weight: str  # the file, in ``<root>/draft/`` (a folder) or the repository (the Hugging Face cache)
    steps: int
    guidance_scale: float
    scheduler: str  # a diffusers scheduler class, built from the base scheduler's config with ``scheduler_config``
    scheduler_config: tuple[tuple[str, object], ...]


DRAFT_FOLDER = "draft"
DRAFT = DraftVariant(
    repo_id="ByteDance/SDXL-Lightning",
    weight="sdxl_lightning_4step_lora.safetensors",
    steps=4,
    guidance_scale=0.0,
    scheduler="EulerDiscreteScheduler",
    scheduler_config=(("timestep_spacing", "trailing"),),
)
DRAFT_REPOSITORY = Repository(DRAFT.repo_id, DRAFT_FOLDER, (DRAFT.weight,))
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
    image_encoder_subfolder: str = IMAGE_ENCODER_SUBFOLDER
    adapter_subfolder: str = ADAPTER_SUBFOLDER
    identity_weight: str = IDENTITY_WEIGHT
    style_weight: str = STYLE_WEIGHT
    revision: str | None = None  # known from where the weights were found (the Hugging Face cache's commits)
    draft_dir: Path | None = None  # where the draft LoRA lies (default: ``<root>/draft``)
    draft: DraftVariant = DRAFT

    @property
    def draft_file(self) -> Path:
        """The draft variant's LoRA file (it may be absent: ``draft_missing``)."""
        return (self.draft_dir if self.draft_dir is not None else self.root / DRAFT_FOLDER) / self.draft.weight

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


def _folder(profile: ModelProfile, repository: Repository) -> Path:
    return profile.base_dir if repository.folder == "base" else profile.ip_adapter_dir


def _required(profile: ModelProfile) -> list[Path]:
    return [_folder(profile, repo) / rel for repo in REPOSITORIES for rel in repo.files]


def required_files(profile: ModelProfile) -> list[str]:
    """Every file the engine loads, as shown by ``missing_files`` (relative to the root where possible)."""
    return [_shown(profile, path) for path in _required(profile)]


def _shown(profile: ModelProfile, path: Path) -> str:
    """``path`` relative to the root when it lies under it (it does for resolved profiles), else in full."""
    return path.relative_to(profile.root).as_posix() if path.is_relative_to(profile.root) else str(path)


def draft_missing(profile: ModelProfile) -> str | None:
    """The draft LoRA as ``missing_files`` shows paths when it is absent, else None (it is optional)."""
    path = profile.draft_file
    return None if path.is_file() else _shown(profile, path)


def missing_files(profile: ModelProfile) -> list[str]:
    """The required files that are absent, as paths relative to the profile root (empty when complete)."""
    return [_shown(profile, path) for path in _required(profile) if not path.is_file()]


def read_revision(profile: ModelProfile) -> str:
    """The weights' revision: MODEL_REVISION when present, else a cheap fingerprint of names and sizes.

    The fallback hashes model_index.json and the names and sizes of the large files, not their contents: it changes
    when a different model is mounted, costs a few stat calls, and never reads gigabytes at worker start.
    """
    if profile.revision:
        return profile.revision
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


_COMMIT = re.compile(r"[0-9a-f]{40}")


def sdxl_revision(commits: dict[str, str]) -> str:
    """``sdxl-<base commit>-<ip-adapter commit>`` (12 hex digits each): a storage-key-safe name of the weights."""
    return "sdxl-" + "-".join(commits[repo.repo_id][:12] for repo in REPOSITORIES)


def sdxl_from_hf_cache(root: Path, cache_dir: Path | None = None,
                       revisions: dict[str, str] | None = None) -> ModelProfile | None:
    """The ``sdxl`` profile as the Hugging Face cache holds it (no network call), or None when it holds no snapshot.

    ``revisions`` maps a repository id to a branch, tag or commit (default ``main``). ``root`` is only where
    messages point (the folder the profile would have used). The snapshot may still lack files: check
    ``missing_files``.
    """
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # the API image has no huggingface_hub: the folder is the only place
        return None
    folders: dict[str, Path] = {}
    commits: dict[str, str] = {}
    for repo in REPOSITORIES:
        try:
            revision = (revisions or {}).get(repo.repo_id, "main")
            folder = snapshot_download(repo.repo_id, revision=revision, allow_patterns=list(repo.files),
                                       cache_dir=cache_dir, local_files_only=True)
        except (LocalEntryNotFoundError, OSError, ValueError):
            return None
        folders[repo.folder] = Path(folder)
        commit = Path(folder).name
        commits[repo.repo_id] = commit if _COMMIT.fullmatch(commit) else hashlib.sha256(commit.encode()).hexdigest()
    draft_dir = None
    try:  # optional: without it, draft jobs fail setup_failed naming the file
        draft_dir = Path(snapshot_download(DRAFT_REPOSITORY.repo_id, allow_patterns=list(DRAFT_REPOSITORY.files),
                                           cache_dir=cache_dir, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    return ModelProfile(name="sdxl", root=Path(root), base_dir=folders["base"], ip_adapter_dir=folders["ip-adapter"],
                        revision=sdxl_revision(commits), draft_dir=draft_dir)


def locate_profile(name: str, model_dir: Path, *, explicit: bool, cache_dir: Path | None = None) -> ModelProfile:
    """The profile at ``model_dir``; for ``sdxl`` with no folder configured (``explicit`` False) and an incomplete
    default folder, the Hugging Face cache's snapshot when it is complete."""
    profile = resolve_profile(name, model_dir)
    if name != "sdxl" or explicit or not missing_files(profile):
        return profile
    cached = sdxl_from_hf_cache(profile.root, cache_dir)
    if cached is not None and not missing_files(cached):
        logger.info("sdxl weights found in the Hugging Face cache (%s)", cached.revision)
        return cached
    return profile
