"""``illustrations models download``: fetch the ``sdxl`` weights once, on a host with network (never at job time).

Each repository of ``profiles.REPOSITORIES`` is resolved to a commit first (``HfApi.model_info``), then exactly its
listed files are fetched at that commit with ``huggingface_hub.snapshot_download(allow_patterns=...)``: about 18 GB
(the fp32 SDXL UNet and text encoders, the ViT-H image encoder and two adapters), then the draft variant's LoRA
(``profiles.DRAFT_REPOSITORY``, SDXL-Lightning's 4-step LoRA, about 0.4 GB) the same way. Downloads resume where
they stopped. Two destinations:

- a folder (default: the configured model folder): ``<dir>/base`` and ``<dir>/ip-adapter`` with ``local_dir=``,
  then ``MODEL_REVISION`` written last, so a folder with that file is complete;
- the Hugging Face cache (``--cache``; ``HF_HUB_CACHE`` or ``HF_HOME`` say where), where workers find it with no
  folder configured (``profiles.sdxl_from_hf_cache``).

Gated or private mirrors take a token the usual way (``HF_TOKEN`` or ``hf auth login``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from worker.pipeline.profiles import (
    DRAFT_REPOSITORY,
    REPOSITORIES,
    REVISION_FILE,
    ModelProfile,
    ModelsMissing,
    draft_missing,
    missing_files,
    resolve_profile,
    sdxl_from_hf_cache,
    sdxl_revision,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedFile:
    repo_id: str
    path_in_repo: str
    local_path: str  # relative to the profile root


def plan(profile: ModelProfile) -> list[PlannedFile]:
    """What a download fetches, and where each file lands."""
    return [
        PlannedFile(repo.repo_id, rel, f"{repo.folder}/{rel}")
        for repo in (*REPOSITORIES, DRAFT_REPOSITORY)
        for rel in repo.files
    ]


class DownloadFailed(Exception):
    """The weights could not be fetched; the message says why and what to do."""


def download_sdxl(target: Path | None, *, revisions: dict[str, str] | None = None, cache_dir: Path | None = None,
                  max_workers: int = 8) -> ModelProfile:
    """Fetch the sdxl weights into ``target`` (a folder), or into the Hugging Face cache when ``target`` is None.

    ``revisions`` maps a repository id to a branch, tag or commit (default ``main``); the cache is searched at
    ``main`` by workers, so only a folder takes other revisions. Returns the complete profile.
    """
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    if target is None and revisions:
        raise ValueError("workers look up the Hugging Face cache at `main`: pin revisions with a folder instead")
    api = HfApi()
    commits: dict[str, str] = {}
    for repo in (*REPOSITORIES, DRAFT_REPOSITORY):  # the draft LoRA last: the others are what final jobs need
        wanted = (revisions or {}).get(repo.repo_id, "main")
        try:
            if target is None:
                # Into the cache at the branch itself, so that refs/main names the snapshot workers will use.
                folder = snapshot_download(repo.repo_id, revision=wanted, allow_patterns=list(repo.files),
                                           cache_dir=cache_dir, max_workers=max_workers)
                commits[repo.repo_id] = Path(folder).name
                continue
            sha = api.model_info(repo.repo_id, revision=wanted).sha
            if sha is None:
                raise DownloadFailed(f"the Hub gave no commit for {repo.repo_id}@{wanted}")
            commits[repo.repo_id] = sha
            logger.info("fetching %d files of %s at %s", len(repo.files), repo.repo_id, sha)
            snapshot_download(repo.repo_id, revision=sha, allow_patterns=list(repo.files),
                              local_dir=target / repo.folder, max_workers=max_workers)
        except OfflineModeIsEnabled:
            raise DownloadFailed("HF_HUB_OFFLINE is set: downloading needs network (unset it on this host)") from None
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
            raise DownloadFailed(f"{repo.repo_id}@{wanted} could not be fetched ({type(exc).__name__})") from exc
    if target is None:
        found = sdxl_from_hf_cache(Path("."), cache_dir)
        if found is None or missing_files(found) or draft_missing(found):
            raise DownloadFailed("the Hugging Face cache does not hold a complete snapshot after downloading it")
        return found
    profile = resolve_profile("sdxl", target)
    missing = missing_files(profile) + [path for path in [draft_missing(profile)] if path]
    if missing:
        raise ModelsMissing(profile, missing)
    sources = " ".join(f"{repo_id}@{sha}" for repo_id, sha in commits.items())
    # The revision names the base and adapter commits only (what final images depend on); the draft LoRA's commit
    # is listed with the sources.
    (target / REVISION_FILE).write_text(f"{sdxl_revision(commits)}\n{sources}\n", encoding="utf-8")
    return resolve_profile("sdxl", target)
