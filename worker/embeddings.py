"""Reference embeddings computed once per image and kept in storage (and a few in memory), as safetensors.

Key: ``embeddings/<image sha256>/<encoder revision>/<adapter>[-<crop>].safetensors``. The encoder revision names the
weights and the dtype (``Engine.encoder_revision``), so a new model or another device type never reads a stale
embedding; ``<crop>`` (``shared.faces.crop_tag``: the crop rule's version, the detector and the face box) names the
face crop an identity embedding was made of (none: the whole photo), so a changed detector or margin never does
either.
A hit skips both the image read and the image encoder; since the engine encodes every reference on its own, a
cached embedding gives exactly the image the uncached one gives.

The cache only ever saves work: a store that fails to read or write is logged and the embedding is computed. The
objects are keyed by image content, not by user: deleting a user deletes ``embeddings/<sha256>/`` of every image
only they referenced (``shared.deletion.engine``), and deleting a subject that of each photo no other subject has
(``shared.deletion.subjects``), whatever the revisions: keep every variant of an image's embeddings under that
prefix.

(``cachetools.LRUCache`` was considered for the memory layer; an ``OrderedDict`` does it in a few lines.)
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable

import PIL.Image
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from shared.storage import ObjectNotFound, Storage, StorageError
from worker.pipeline.engine import IDENTITY, STYLE, Engine

log = logging.getLogger(__name__)

ADAPTER_NAMES = {IDENTITY: "identity", STYLE: "style"}
TENSOR_NAME = "embedding"


def embedding_prefix(sha256: str) -> str:
    """Every embedding of one image, under every encoder revision (what a user deletion removes)."""
    return f"embeddings/{sha256}/"


def embedding_key(encoder_revision: str, adapter: int, sha256: str, crop: str | None = None) -> str:
    name = ADAPTER_NAMES[adapter] + (f"-{crop}" if crop else "")
    return f"{embedding_prefix(sha256)}{encoder_revision}/{name}.safetensors"


def embedding_keys(encoder_revision: str, sha256: str) -> list[str]:
    """The keys of an image's whole-photo embeddings under one encoder revision (face crops' keys are under the same
    prefix, ``embedding_prefix``)."""
    return [embedding_key(encoder_revision, adapter, sha256) for adapter in ADAPTER_NAMES]


class EmbeddingCache:
    def __init__(self, storage: Storage, engine: Engine, *, enabled: bool = True, memory_items: int = 64) -> None:
        self.storage = storage
        self.engine = engine
        self.enabled = enabled
        self.memory_items = memory_items
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()

    def embedding(self, adapter: int, sha256: str, image: Callable[[], PIL.Image.Image],
                  crop: str | None = None) -> tuple[torch.Tensor, bool]:
        """The embedding of the image with this sha256 (``image`` is called only on a miss, and gives the crop named
        ``crop`` of it, if any) and whether it hit."""
        if not self.enabled:
            return self.engine.embed(adapter, image()), False
        key = embedding_key(self.engine.encoder_revision, adapter, sha256, crop)
        cached = self._memory_get(key)
        if cached is None:
            cached = self._storage_get(key)
            if cached is not None:
                self._memory_put(key, cached)
        if cached is not None:
            return cached, True
        embedding = self.engine.embed(adapter, image())
        stored = embedding.detach().to("cpu").contiguous()
        self._memory_put(key, stored)
        try:
            self.storage.put(key, save_tensors({TENSOR_NAME: stored}), "application/octet-stream")
        except StorageError as exc:
            log.warning("embedding not cached (%s)", type(exc).__name__)
        return embedding, False

    def _storage_get(self, key: str) -> torch.Tensor | None:
        try:
            data = self.storage.get(key)
        except ObjectNotFound:
            return None
        except StorageError as exc:
            log.warning("embedding cache unreadable (%s); computing", type(exc).__name__)
            return None
        try:
            return load_tensors(data)[TENSOR_NAME]
        except (SafetensorError, KeyError, ValueError):
            log.warning("cached embedding %s is damaged; computing it again", key)
            return None

    def _memory_get(self, key: str) -> torch.Tensor | None:
        tensor = self._memory.get(key)
        if tensor is not None:
            self._memory.move_to_end(key)
        return tensor

    def _memory_put(self, key: str, tensor: torch.Tensor) -> None:
        if self.memory_items <= 0:
            return
        self._memory[key] = tensor
        self._memory.move_to_end(key)
        while len(self._memory) > self.memory_items:
            self._memory.popitem(last=False)
