"""Training checkpoints as one safetensors object: LoRA weights, AdamW state, and the step in JSON metadata.

No pickle: ``torch.save`` of an optimizer's ``state_dict`` would be one, and loading it would run whatever the file
says. Here every tensor goes into safetensors (``lora.<parameter name>``, ``optimizer.<index>.<field>``) and the rest
of the optimizer's state (its param groups: lr, betas, eps, ...) is JSON in the header. One object per checkpoint,
so a reader sees the previous checkpoint or the new one, never half of one (``Storage.put`` is atomic).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from shared.errors import IllustrationsError

FORMAT = "illustrations-lora-training-checkpoint"
FORMAT_VERSION = "1"


class InvalidCheckpoint(IllustrationsError):
    """A checkpoint that cannot be read or does not fit this training (the message says which)."""


@dataclass(frozen=True)
class Checkpoint:
    step: int
    lora: dict[str, torch.Tensor]  # trainable parameter name -> value
    optimizer: dict[str, Any]  # torch.optim state_dict: {"state": {i: {...}}, "param_groups": [...]}
    fingerprint: str  # what the training was (params and data): a checkpoint of another training is refused


def to_bytes(checkpoint: Checkpoint) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    for name, value in checkpoint.lora.items():
        tensors[f"lora.{name}"] = value.detach().to("cpu").contiguous().clone()
    for index, fields in checkpoint.optimizer["state"].items():
        for field, value in fields.items():
            tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"optimizer.{index}.{field}"] = tensor.detach().to("cpu").contiguous().clone()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "step": str(checkpoint.step),
        "fingerprint": checkpoint.fingerprint,
        "param_groups": json.dumps(checkpoint.optimizer["param_groups"]),
    }
    return save(tensors, metadata=metadata)


def from_bytes(data: bytes) -> Checkpoint:
    try:
        tensors = load(data)
        metadata = _header(data)
    except (SafetensorError, ValueError, json.JSONDecodeError) as exc:
        raise InvalidCheckpoint(f"the checkpoint is not readable ({type(exc).__name__})") from None
    if metadata.get("format") != FORMAT or metadata.get("format_version") != FORMAT_VERSION:
        raise InvalidCheckpoint("the object is not a training checkpoint of this version")
    lora = {key.removeprefix("lora."): value for key, value in tensors.items() if key.startswith("lora.")}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, field = key.split(".", 2)
            state.setdefault(int(index), {})[field] = value
    optimizer = {"state": state, "param_groups": json.loads(metadata["param_groups"])}
    return Checkpoint(int(metadata["step"]), lora, optimizer, metadata.get("fingerprint", ""))


def _header(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors buffer (its JSON header, which ``load`` does not return)."""
    size = int.from_bytes(data[:8], "little")
    if size <= 0 or size > len(data) - 8:
        raise ValueError("bad header size")
    header = json.loads(data[8:8 + size])
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise ValueError("bad metadata")
    return {str(k): str(v) for k, v in metadata.items()}
