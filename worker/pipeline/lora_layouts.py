"""Every SDXL LoRA layout ``load_lora_weights`` loads, read the way diffusers reads it.

LoRA files come in four layouts: PEFT (``unet.<module>.lora_A.weight``, what ``save_lora_weights`` writes from
``get_peft_model_state_dict``), diffusers-trained (``unet.<module>.lora.down.weight``: diffusers' SDXL training
scripts, through ``convert_state_dict_to_diffusers``), the older attention-processor layout
(``unet.<block>.processor.to_q_lora.down.weight``) and kohya (``lora_unet_*``, ``lora_te1_*``, ``lora_te2_*`` with
``.alpha`` tensors), each with or without text-encoder parts. Rather than a list of suffixes, ``read_lora`` runs
diffusers' own normalisation (``StableDiffusionXLPipeline.lora_state_dict``, a classmethod: no pipeline is loaded),
then the same per-component conversions ``load_lora_weights`` applies (``convert_unet_state_dict_to_peft`` for the
UNet; ``convert_state_dict_to_diffusers`` then ``convert_state_dict_to_peft`` for the text encoders), and checks
that what comes out is a LoRA in PEFT names for the UNet and SDXL's two text encoders. A file whose tensors end up
anywhere else would load nothing (diffusers ignores keys outside its prefixes without a word): ``InvalidLoraFile``.

The result describes the file as the loader will see it: rank, alpha (the adapter metadata, kohya's ``.alpha``
tensors, or the rank), the adapted modules per component (used to pin ``target_modules``) and the hot-swap
signature (``shared.lora_files.LoraInfo``).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from shared.lora_files import InvalidLoraFile, LoraInfo

COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
SDXL_LAYERS_PER_BLOCK = 2  # kohya files may name blocks the SGM way; diffusers maps them with the UNet's config
_PEFT_KEY = re.compile(r"(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_magnitude_vector)")
_VARIANT_KEYS = ("alpha_pattern", "rank_pattern", "use_rslora", "use_dora", "lora_bias")


@dataclass(frozen=True)
class LoraFile:
    info: LoraInfo
    modules: dict[str, tuple[str, ...]]  # component -> the modules it adapts, in PEFT names (as target_modules)


def read_lora(path: Path, layers_per_block: int = SDXL_LAYERS_PER_BLOCK) -> LoraFile:
    """Read ``path`` as ``load_lora_weights`` would; raise ``InvalidLoraFile`` naming what is wrong."""
    from diffusers import StableDiffusionXLPipeline
    from safetensors import SafetensorError

    path = Path(path)
    if not path.is_file():
        raise InvalidLoraFile("no such file")
    try:
        state, network_alphas, metadata = StableDiffusionXLPipeline.lora_state_dict(
            str(path.parent),
            weight_name=path.name,
            use_safetensors=True,  # never torch.load (pickle)
            local_files_only=True,
            unet_config=SimpleNamespace(layers_per_block=layers_per_block),
            return_lora_metadata=True,
        )
    except (SafetensorError, OSError) as exc:
        raise InvalidLoraFile(f"not a readable safetensors file ({type(exc).__name__})") from None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise InvalidLoraFile(f"diffusers cannot read it as an SDXL LoRA ({type(exc).__name__})") from None
    if not state:
        raise InvalidLoraFile("the file holds no tensors")
    if not all("lora" in key for key in state):
        raise InvalidLoraFile("every tensor name of a LoRA contains 'lora'; this file has others (a full model?)")
    parts: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        component, _, rest = key.partition(".")
        if component not in COMPONENTS or not rest:
            raise InvalidLoraFile("it has tensors for neither the UNet nor SDXL's text encoders (another model's "
                                  "LoRA, or a layout diffusers does not load)")
        parts.setdefault(component, {})[rest] = value
    modules: dict[str, tuple[str, ...]] = {}
    ranks: set[int] = set()
    for component, tensors in parts.items():
        try:
            peft = _to_peft(component, tensors)
        except (ValueError, KeyError) as exc:
            raise InvalidLoraFile(f"its {component} part is in no LoRA layout diffusers loads ({exc})") from None
        modules[component], found = _modules(component, peft)
        ranks |= found
    metadata = metadata or {}
    alpha = _alpha(metadata, network_alphas, max(ranks))
    return LoraFile(_info(modules, ranks, alpha, metadata, network_alphas, len(state)), modules)


def _to_peft(component: str, tensors: dict[str, Any]) -> dict[str, Any]:
    """What ``load_lora_weights`` turns one component's tensors into before PEFT sees them."""
    from diffusers.utils.state_dict_utils import (
        convert_state_dict_to_diffusers,
        convert_state_dict_to_peft,
        convert_unet_state_dict_to_peft,
    )

    if component == "unet":  # UNet2DConditionModel.load_lora_adapter
        return tensors if "lora_A" in next(iter(tensors)) else convert_unet_state_dict_to_peft(tensors)
    # lora_base._load_lora_into_text_encoder; transformers 5's CLIP text models have no ``text_model`` level
    converted = convert_state_dict_to_peft(convert_state_dict_to_diffusers(tensors))
    return {key.removeprefix("text_model."): value for key, value in converted.items()}


def _modules(component: str, peft: dict[str, Any]) -> tuple[tuple[str, ...], set[int]]:
    down: dict[str, int] = {}
    up: set[str] = set()
    for key, value in peft.items():
        match = _PEFT_KEY.fullmatch(key)
        if match is None:
            raise InvalidLoraFile(f"its {component} part has a tensor in no LoRA layout diffusers loads")
        if match["part"] == "lora_A.weight":
            if value.ndim < 2:
                raise InvalidLoraFile(f"a lora_A weight of its {component} part is not a matrix")
            down[match["module"]] = int(value.shape[0])
        elif match["part"] == "lora_B.weight":
            up.add(match["module"])
    if not down or set(down) != up:
        raise InvalidLoraFile(f"its {component} part does not pair every down (A) weight with an up (B) weight")
    return tuple(sorted(down)), set(down.values())


def _alpha(metadata: dict[str, Any], network_alphas: dict[str, Any] | None, rank: int) -> float:
    values = {float(v) for k, v in metadata.items() if k.endswith("lora_alpha") and isinstance(v, int | float)}
    if not values and network_alphas:
        values = {float(v) for v in network_alphas.values()}
    return max(values) if values else float(rank)


def _info(modules: dict[str, tuple[str, ...]], ranks: set[int], alpha: float, metadata: dict[str, Any],
          network_alphas: dict[str, Any] | None, tensors: int) -> LoraInfo:
    """Rank, alpha and a digest of everything that must match for a hot-swap to scale correctly."""
    names = sorted(f"{component}.{module}" for component, found in modules.items() for module in found)
    variants = {k: v for k, v in metadata.items() if k.endswith(_VARIANT_KEYS) and v not in (None, False, {}, [])}
    if network_alphas and len({float(v) for v in network_alphas.values()}) > 1:  # kohya: per-module alphas
        variants["network_alphas"] = {k: float(v) for k, v in sorted(network_alphas.items())}
    fingerprint = "\n".join(names) + "\n" + json.dumps(variants, sort_keys=True, default=str)
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    if len(ranks) > 1:
        digest += "-r" + "-".join(str(r) for r in sorted(ranks))  # mixed ranks: only identical files swap
    text_encoder = any(component != "unet" for component in modules)
    return LoraInfo(rank=max(ranks), alpha=alpha, text_encoder=text_encoder, targets=digest, tensors=tensors)
