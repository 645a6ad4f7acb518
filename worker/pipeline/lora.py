"""LoRA slots: K named adapters resident in the pipeline, one of them active per job, least recently used replaced;
for a compiled UNet, one hot-swap slot instead (``HotswapSlot``, at the end).

A job with a style activates its LoRA's slot with ``set_adapters([slot], [scale])`` (~10 ms); a job without one
disables every LoRA layer, so no style reaches another job's image. Adapters outside the slots that stay resident
(the draft LoRA of ``quality: draft``) are named per job (``also``, ``only``), active beside the style at their own
weights. A LoRA that is not resident replaces the least recently used slot: in place (``hotswap=True``, ~60 ms
instead of a ~0.4 s fresh load, and no recompilation of a compiled UNet) when it has the same rank, alpha and
target layers as the slot's current one, because PEFT keeps the slot's original rank and alpha for scaling after a
swap; otherwise the slot's adapter is deleted and the new one loaded fresh. Slots are keyed by the file's sha256,
so the same weights under two names share one slot.

Files are loaded with ``use_safetensors=True``: diffusers would otherwise fall back to ``torch.load`` (pickle) for a
file that is not valid safetensors. The adapter metadata diffusers reads from the header becomes PEFT's
``LoraConfig`` as it is; before loading, it is reduced to the fields that describe the weights (rank, alpha, their
per-module patterns, the scaling variant) and ``target_modules`` is set to exactly the modules the file holds
weights for. A file saved by training carries suffixes such as ``to_q``, which would also put (empty) LoRA layers
into the IP-Adapter's Resampler; and fields like ``modules_to_save`` or an ``init_lora_weights`` that rewrites base
weights (PiSSA, OLoRA) must not come from a file.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.lora_files import InvalidLoraFile, LoraInfo
from worker.pipeline.lora_layouts import LoraFile, read_lora

logger = logging.getLogger(__name__)

WEIGHT_NAME = "lora.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
# LoraConfig fields a file may set: they describe its weights. Everything else takes PEFT's defaults.
KEPT_FIELDS = ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "use_dora", "lora_bias")
# What diffusers and PEFT raise for a file that does not fit the model (shapes, keys, config).
LOAD_ERRORS = (ValueError, RuntimeError, KeyError, TypeError, OSError)


@dataclass
class Slot:
    adapter: str  # the adapter name inside the pipeline ("slot0", ...)
    key: str | None = None  # sha256 of the resident file
    info: LoraInfo | None = None
    last_used: int = 0


@dataclass(frozen=True)
class LoraRequest:
    """The LoRA a job asks for: its file's sha256, the weight, and how to get the bytes on a miss."""

    key: str
    scale: float
    fetch: Callable[[], bytes]


@dataclass(frozen=True)
class LoraUse:
    adapter: str
    resident: bool  # it was already in a slot: no load
    hotswapped: bool
    seconds: float


class LoraLoadFailed(Exception):
    """The file could not be loaded into the pipeline (not a LoRA of this model); the slot is left empty."""


class LoraSlots:
    def __init__(self, pipe: Any, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"`capacity` must be at least 1, got {capacity}")
        self.pipe = pipe
        self.slots = [Slot(adapter=f"slot{i}") for i in range(capacity)]
        self._clock = 0
        self._enabled = False
        self._active: dict[str, float] | None = None  # what ``only`` set last (None: a slot was activated since)

    def resident(self) -> dict[str, str]:
        """sha256 -> adapter name of every loaded LoRA."""
        return {slot.key: slot.adapter for slot in self.slots if slot.key is not None}

    def activate(self, request: LoraRequest, also: Mapping[str, float] | None = None) -> LoraUse:
        """Make ``request``'s LoRA the only active slot, at its scale, with the resident adapters ``also`` (name ->
        weight) beside it; load it into a slot if needed."""
        started = time.perf_counter()
        self._clock += 1
        slot = next((s for s in self.slots if s.key == request.key), None)
        resident = slot is not None
        hotswapped = False
        if slot is None:
            slot = min(self.slots, key=lambda s: (s.key is not None, s.last_used))  # empty first, then LRU
            hotswapped = self._load(slot, request)
        slot.last_used = self._clock
        if not self._enabled or not resident:  # a fresh load may have added layers in the disabled state
            self.pipe.enable_lora()
            self._enabled = True
        also = dict(also or {})
        self.pipe.set_adapters([slot.adapter, *also], adapter_weights=[request.scale, *also.values()])
        self._active = None
        return LoraUse(slot.adapter, resident, hotswapped, time.perf_counter() - started)

    def disable(self) -> None:
        """No LoRA for this job: every LoRA layer is bypassed (the resident weights stay loaded)."""
        if self._enabled:
            self.pipe.disable_lora()
            self._enabled = False

    def only(self, adapters: Mapping[str, float]) -> None:
        """No style for this job: only the resident adapters ``adapters`` (name -> weight) active, every other LoRA
        layer bypassed; none: ``disable``. Unchanged since the last job: nothing is set."""
        if not adapters:
            self.disable()
            return
        wanted = dict(adapters)
        if self._enabled and self._active == wanted:
            return
        if not self._enabled:
            self.pipe.enable_lora()
            self._enabled = True
        self.pipe.set_adapters(list(wanted), adapter_weights=list(wanted.values()))
        self._active = wanted

    def _load(self, slot: Slot, request: LoraRequest) -> bool:
        """Put the LoRA into ``slot``; True when it was hot-swapped in place.

        Whatever interrupts a load (a bad file, out of memory, a time limit) leaves the slot empty, never holding
        a mix of two LoRAs' weights. Only a file that cannot be loaded becomes ``LoraLoadFailed``.
        """
        with tempfile.TemporaryDirectory(prefix="lora-") as folder:
            path = Path(folder) / WEIGHT_NAME
            info = _write_and_read(request, path, self.pipe.unet.config.layers_per_block).info
            swap = slot.info is not None and slot.info.swap_signature == info.swap_signature and not info.text_encoder
            if swap:
                try:
                    self._load_file(folder, slot.adapter, hotswap=True)
                    self._set(slot, request.key, info)
                    return True
                except LOAD_ERRORS as exc:  # a failed swap may leave mixed weights: drop the slot, load afresh
                    self._empty(slot)
                    if _out_of_memory(exc):
                        raise
                    logger.warning("hot-swap into %s failed (%s); loading afresh", slot.adapter, type(exc).__name__)
                except BaseException:
                    self._empty(slot)
                    raise
            self._empty(slot)
            try:
                self._load_file(folder, slot.adapter, hotswap=False)
            except LOAD_ERRORS as exc:
                self._empty(slot)
                if _out_of_memory(exc):
                    raise
                raise LoraLoadFailed(f"the LoRA could not be loaded ({type(exc).__name__})") from exc
            except BaseException:
                self._empty(slot)
                raise
            self._set(slot, request.key, info)
            return False

    def _load_file(self, folder: str, adapter: str, *, hotswap: bool) -> None:
        with warnings.catch_warnings():
            # PEFT warns when a model gets a second adapter: several resident adapters are the point of the slots.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            # A failed load deletes its half-made adapter, and PEFT makes a resident one active (see ``_empty``).
            warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted",
                                    category=UserWarning)
            self.pipe.load_lora_weights(
                folder,
                weight_name=WEIGHT_NAME,
                adapter_name=adapter,
                hotswap=hotswap,
                use_safetensors=True,
                local_files_only=True,
            )

    def _set(self, slot: Slot, key: str, info: LoraInfo) -> None:
        slot.key, slot.info = key, info
        logger.info("LoRA %s… in %s (rank %d)", key[:12], slot.adapter, info.rank)

    def _empty(self, slot: Slot) -> None:
        if slot.adapter in self._loaded_adapters():
            with warnings.catch_warnings():
                # PEFT then makes a resident adapter (the draft LoRA) active in the slot's layers; every job sets
                # its adapters before it runs (``activate``, ``only``).
                warnings.filterwarnings("ignore", message="Adapter .* was active which is now deleted",
                                        category=UserWarning)
                self.pipe.delete_adapters(slot.adapter)
        slot.key, slot.info, self._active = None, None, None
        if not self._loaded_adapters():
            self._enabled = False

    def _loaded_adapters(self) -> set[str]:
        loaded: dict[str, list[str]] = self.pipe.get_list_adapters()
        return {name for names in loaded.values() for name in names}


def _out_of_memory(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)  # a RuntimeError: not the file's fault


def normalise_metadata(path: Path, modules: dict[str, tuple[str, ...]]) -> None:
    """Rewrite ``path``'s adapter metadata in place: the weight-describing fields, and exactly ``modules`` (per
    component, in PEFT names: ``lora_layouts.read_lora``) as the target modules."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata() or {}
    raw = header.get(METADATA_KEY)
    if not raw:
        return  # no metadata: diffusers derives the config from the weights' names, exactly
    metadata = json.loads(raw)
    tensors = load_file(path)
    normalised: dict[str, object] = {}
    for component in COMPONENTS:
        if not modules.get(component):
            continue
        for field in KEPT_FIELDS:
            if f"{component}.{field}" in metadata:
                normalised[f"{component}.{field}"] = metadata[f"{component}.{field}"]
        # A string is matched with re.fullmatch against each module name: these modules and no others.
        names = "(?:" + "|".join(re.escape(m) for m in modules[component]) + ")"
        if component != "unet":  # CLIP text models have a ``text_model`` level before transformers 5
            names = r"(?:text_model\.)?" + names
        normalised[f"{component}.target_modules"] = names
    save_file(tensors, path, metadata={**header, METADATA_KEY: json.dumps(normalised, sort_keys=True)})


# --- One hot-swap slot, for a compiled UNet -------------------------------------------------------------------------

HOTSWAP_ADAPTER = "style"
# The layers the slot is prepared on: a LoRA may adapt any subset of them (the rest are zeroed on a swap); one that
# adapts another layer cannot be swapped in. Kohya's default SDXL LoRA and diffusers' training scripts stay inside.
PREPARED_LAYERS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")


def _write_and_read(request: LoraRequest, path: Path, layers_per_block: int) -> LoraFile:
    """Fetch ``request``'s file to ``path`` and read it as ``load_lora_weights`` will (its adapter metadata
    normalised in place); a file that cannot be used is ``LoraLoadFailed``."""
    path.write_bytes(request.fetch())
    try:
        lora = read_lora(path, layers_per_block)
        normalise_metadata(path, lora.modules)
    except (InvalidLoraFile, ValueError, OSError) as exc:
        raise LoraLoadFailed(f"the LoRA file is not usable ({type(exc).__name__})") from exc
    return lora


def _no_resident_adapters(adapters: Mapping[str, float] | None) -> None:
    if adapters:  # Engine.load never loads the draft LoRA into a compiled engine; a draft job fails before this
        raise ValueError(f"a compiled worker holds no resident adapters ({', '.join(adapters)})")


class HotswapSlot:
    """The LoRA of a compiled UNet: one adapter, prepared once (``enable_lora_hotswap(target_rank)`` and a zero LoRA
    of that rank on every prepared layer, before the UNet is compiled), into which each style is hot-swapped. Its
    scale lives in tensors changed in place, and "no LoRA" is scale 0: the compiled graph never changes.

    diffusers hot-swaps UNet layers only, within the prepared rank and layers: a LoRA that adapts a text encoder,
    has a higher rank or adapts other layers is refused (``LoraLoadFailed``, naming why) rather than loaded afresh,
    which would fail on a compiled UNet anyway.
    """

    def __init__(self, pipe: Any, target_rank: int) -> None:
        self.pipe = pipe
        self.target_rank = target_rank
        self.key: str | None = None  # sha256 of the LoRA in the slot (None: the zero LoRA)
        self.modules = _prepared_modules(pipe.unet)
        self._base: dict[str, float] = {}  # layer -> its scaling at weight 1 (alpha / rank of the LoRA in it)
        pipe.enable_lora_hotswap(target_rank=target_rank)
        self._load(self._zero_file, hotswap=False)
        self._scale(0.0)

    def resident(self) -> dict[str, str]:
        return {self.key: HOTSWAP_ADAPTER} if self.key is not None else {}

    def activate(self, request: LoraRequest, also: Mapping[str, float] | None = None) -> LoraUse:
        _no_resident_adapters(also)
        started = time.perf_counter()
        resident = request.key == self.key
        if not resident:
            self._swap(request)
        self._scale(request.scale)
        return LoraUse(HOTSWAP_ADAPTER, resident, not resident, time.perf_counter() - started)

    def disable(self) -> None:
        """No LoRA: the slot's scale is 0 (its weights stay; nothing of them reaches the image)."""
        self._scale(0.0)

    def only(self, adapters: Mapping[str, float]) -> None:
        """No style for this job (``LoraSlots.only``): the slot at scale 0; a compiled worker has no resident
        adapters."""
        _no_resident_adapters(adapters)
        self.disable()

    def _swap(self, request: LoraRequest) -> None:
        def write(path: Path) -> None:
            lora = _write_and_read(request, path, self.pipe.unet.config.layers_per_block)
            if lora.info.text_encoder:
                raise LoraLoadFailed("a compiled worker hot-swaps UNet LoRAs only; this one adapts a text encoder")
            if lora.info.rank > self.target_rank:
                raise LoraLoadFailed(f"rank {lora.info.rank} is above the compiled worker's LoRA target rank "
                                     f"({self.target_rank})")
            if not set(lora.modules.get("unet", ())) <= set(self.modules):
                raise LoraLoadFailed("it adapts layers outside those a compiled worker prepares")

        self.key = None  # until the swap succeeds
        try:
            self._load(write, hotswap=True)
        except LoraLoadFailed:
            raise
        except LOAD_ERRORS as exc:  # a failed swap may leave mixed weights: back to the zero LoRA
            self._load(self._zero_file, hotswap=True)
            if _out_of_memory(exc):
                raise
            raise LoraLoadFailed(f"the LoRA could not be hot-swapped ({type(exc).__name__})") from exc
        self.key = request.key

    def _load(self, write: Callable[[Path], None], *, hotswap: bool) -> None:
        """Write the file with ``write`` into a temporary folder and load it into the slot; note each layer's
        scaling at weight 1."""
        with tempfile.TemporaryDirectory(prefix="lora-") as folder:
            write(Path(folder) / WEIGHT_NAME)
            self.pipe.load_lora_weights(folder, weight_name=WEIGHT_NAME, adapter_name=HOTSWAP_ADAPTER,
                                        hotswap=hotswap, use_safetensors=True, local_files_only=True)
        self._base = {name: float(scaling) for name, scaling in self._scalings()}

    def _zero_file(self, path: Path) -> None:
        """A LoRA of the target rank on every prepared layer, all zeros: the slot's shape, and no effect."""
        import torch
        from safetensors.torch import save_file

        rank, unet = self.target_rank, self.pipe.unet
        tensors = {}
        for name in self.modules:
            layer = unet.get_submodule(name)
            tensors[f"unet.{name}.lora_A.weight"] = torch.zeros(rank, layer.in_features)
            tensors[f"unet.{name}.lora_B.weight"] = torch.zeros(layer.out_features, rank)
        target = "(?:" + "|".join(re.escape(name) for name in self.modules) + ")"
        metadata = {"unet.r": rank, "unet.lora_alpha": rank, "unet.target_modules": target}
        save_file(tensors, path, metadata={"format": "pt", METADATA_KEY: json.dumps(metadata)})

    def _scalings(self) -> list[tuple[str, Any]]:
        return [(name, module.scaling[HOTSWAP_ADAPTER]) for name, module in self.pipe.unet.named_modules()
                if HOTSWAP_ADAPTER in getattr(module, "scaling", {})]

    def _scale(self, weight: float) -> None:
        """Each layer's scaling = weight * alpha / rank, written into its tensor in place (PEFT's ``set_scale``
        would replace the tensor by a float, which a compiled graph reads as a constant: a recompile per value)."""
        for name, scaling in self._scalings():
            scaling.fill_(self._base.get(name, 0.0) * weight)


def _prepared_modules(unet: Any) -> tuple[str, ...]:
    """The UNet's linear layers named in ``PREPARED_LAYERS`` inside its blocks (not the IP-Adapter's Resampler)."""
    import torch

    return tuple(
        name for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear) and name.startswith(("down_blocks.", "mid_block.", "up_blocks."))
        and name.endswith(tuple(f".{layer}" for layer in PREPARED_LAYERS)) and ".processor." not in name
    )
