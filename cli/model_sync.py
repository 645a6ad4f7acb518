"""Model weights synced from a bucket at start (`illustrations models sync s3://bucket/prefix`).

The alternative to baking weights into the image (`illustrations models download` at build time): an init container
copies the profile folder from S3 onto the node once, later starts skip files already there with the same size.
Weights are never fetched at job time.
"""

from __future__ import annotations

from pathlib import Path

from shared.settings import Settings
from shared.storage import open_storage
from shared.storage.s3 import S3Storage


def sync_from_s3(settings: Settings, uri: str, target: Path) -> tuple[int, int]:
    """Copy the weights under ``uri`` into ``target``; returns (downloaded, skipped)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"`uri` must be s3://bucket/prefix, got {uri!r}")
    store = open_storage(settings.model_copy(update={"storage_url": uri}))
    assert isinstance(store, S3Storage)
    target.mkdir(parents=True, exist_ok=True)
    return store.download_tree(target)
