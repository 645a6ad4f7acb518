"""What a LoRA file holds, read from its safetensors header: rank, alpha, which modules it targets.

``LoraInfo`` says whether a LoRA can be hot-swapped into a worker's slot (same rank, alpha and target layers) or needs
a fresh load. ``inspect_lora`` reads it from the header of the files training writes (PEFT layout) and of kohya
files; ``illustrations styles import`` and the GPU worker read every layout diffusers loads with diffusers itself
(``worker.pipeline.lora_layouts``, which needs torch). ``inspect_lora`` reads only the header
(``safetensors.safe_open`` with the numpy framework: no torch, no tensor data, except the scalar ``.alpha`` tensors
of kohya-format files).

Formats: diffusers/PEFT (``unet.<module>.lora_A.weight``, alpha in the ``lora_adapter_metadata`` header that
diffusers writes when saved with ``_collate_lora_metadata``) and kohya (``lora_unet_<module>.lora_down.weight`` with
``.alpha`` tensors). A file saved without alpha metadata gets alpha = rank, which is what diffusers assumes too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from shared.errors import IllustrationsError

_DOWN_SUFFIXES = (".lora_A.weight", ".lora_down.weight")
_TEXT_ENCODER_PREFIXES = ("text_encoder", "lora_te")
_VARIANT_KEYS = ("alpha_pattern", "rank_pattern", "use_rslora", "use_dora", "lora_bias")


class InvalidLoraFile(IllustrationsError):
    """The file is not a LoRA this service can load; the message says why (never the file's content)."""


@dataclass(frozen=True)
class LoraInfo:
    rank: int
    alpha: float
    text_encoder: bool  # it also adapts a text encoder (diffusers cannot hot-swap those)
    targets: str  # digest of the adapted module names: equal digests target the same layers
    tensors: int

    @property
    def swap_signature(self) -> tuple[int, float, bool, str]:
        """Two LoRAs with equal signatures can replace each other in place (hot-swap) with correct scaling."""
        return (self.rank, self.alpha, self.text_encoder, self.targets)


def inspect_lora(path: Path) -> LoraInfo:
    """Read ``path``'s header; raise ``InvalidLoraFile`` when it is not a safetensors LoRA."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            keys = list(handle.keys())
            header = handle.metadata() or {}
            shapes = {key: list(handle.get_slice(key).get_shape()) for key in keys if key.endswith(_DOWN_SUFFIXES)}
            alphas = [float(handle.get_tensor(key)) for key in keys if key.endswith(".alpha")]
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise InvalidLoraFile(f"not a readable safetensors file ({type(exc).__name__})") from None
    if not keys:
        raise InvalidLoraFile("the file holds no tensors")
    if not all("lora" in key for key in keys if not key.endswith(".alpha")):
        raise InvalidLoraFile("every tensor name of a LoRA contains 'lora'; this file has others (a full model?)")
    if not shapes:
        raise InvalidLoraFile("no lora_A / lora_down weights found")
    ranks = {shape[0] for shape in shapes.values()}
    rank = max(ranks)
    metadata = _metadata(header)
    alpha = _alpha(metadata, alphas, rank)
    modules = sorted(key.rsplit(".lora_", 1)[0] for key in shapes)
    # Per-module ranks or alphas and scaling variants change the result as much as the layers do.
    variants = {k: v for k, v in metadata.items() if k.endswith(_VARIANT_KEYS) and v not in (None, False, {}, [])}
    fingerprint = "\n".join(modules) + "\n" + json.dumps(variants, sort_keys=True, default=str)
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    text_encoder = any(key.startswith(_TEXT_ENCODER_PREFIXES) for key in keys)
    if len(ranks) > 1:
        digest += "-r" + "-".join(str(r) for r in sorted(ranks))  # mixed ranks: only identical files swap
    return LoraInfo(rank=rank, alpha=alpha, text_encoder=text_encoder, targets=digest, tensors=len(keys))


def _metadata(header: dict[str, str]) -> dict[str, object]:
    """diffusers' adapter metadata (``{"unet.r": 16, "unet.lora_alpha": 16, ...}``), or {} when absent."""
    raw = header.get("lora_adapter_metadata")
    if not raw:
        return {}
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError:
        raise InvalidLoraFile("the lora_adapter_metadata header is not JSON") from None
    if not isinstance(metadata, dict):
        raise InvalidLoraFile("the lora_adapter_metadata header is not a JSON object")
    return metadata


def _alpha(metadata: dict[str, object], alphas: list[float], rank: int) -> float:
    values = {float(v) for k, v in metadata.items() if k.endswith("lora_alpha") and isinstance(v, int | float)}
    if values:
        return max(values)
    if alphas:
        return max(alphas)
    return float(rank)
