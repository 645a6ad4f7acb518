"""LoRA files for the tiny model in each SDXL layout ``load_lora_weights`` loads, made by diffusers' and PEFT's own
save and conversion functions (never hand-typed key names).

- ``peft``: ``get_peft_model_state_dict`` + ``save_lora_weights`` with the adapter metadata (what training writes).
- ``diffusers``: ``convert_state_dict_to_diffusers`` of the same (``unet.<module>.lora.down.weight``), saved without
  metadata, as diffusers' ``train_text_to_image_lora_sdxl.py`` does.
- ``attn-procs``: the attention-processor layout (``...attn1.processor.to_q_lora.down.weight``). Diffusers no longer
  has the ``LoRAAttnProcessor`` that wrote it, but still has ``AttnProcsLayers``, the module whose ``state_dict``
  named those files: it is given, per attention processor, the old processor's sub-modules
  (``to_q_lora``/``to_k_lora``/``to_v_lora``/``to_out_lora``, each with ``down`` and ``up``) holding the same weights.
- ``kohya``: ``convert_state_dict_to_kohya`` (``lora_unet_*``, ``lora_te1_*``, ``lora_te2_*`` and ``.alpha``).

``+te`` adds LoRA layers on both text encoders (``q_proj``/``k_proj``/``v_proj``/``out_proj``); the attention-processor
layout was UNet-only. Alpha equals the rank everywhere, as files without metadata are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LAYOUTS = ("peft", "peft+te", "diffusers", "diffusers+te", "attn-procs", "kohya", "kohya+te")
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
OLD_NAMES = {"to_q": "to_q_lora", "to_k": "to_k_lora", "to_v": "to_v_lora", "to_out.0": "to_out_lora"}


def _adapted(model: Any, targets: list[str], rank: int, seed: int) -> Any:
    """``model`` with random LoRA layers on ``targets``. Diffusers models through their ``add_adapter``; text
    encoders through PEFT's ``get_peft_model`` (transformers' ``add_adapter`` asks for a newer PEFT than diffusers')."""
    from peft import LoraConfig, get_peft_model

    from worker.pipeline.tiny import randomise_lora

    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets)
    if hasattr(model, "set_adapters"):  # a diffusers model
        model.add_adapter(config)
    else:
        model = get_peft_model(model, config)
    randomise_lora(model, rank, seed)
    return model


def _attention_processor_layout(unet: Any) -> dict[str, Any]:
    """The UNet's LoRA as ``AttnProcsLayers`` names it: ``<processor>.to_q_lora.down.weight`` and so on."""
    import torch
    from diffusers.loaders import AttnProcsLayers

    processors: dict[str, torch.nn.Module] = {}
    for name in unet.attn_processors:  # "down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor"
        attention = unet.get_submodule(name.removesuffix(".processor"))
        old = torch.nn.Module()
        for target, old_name in OLD_NAMES.items():
            layer = attention.get_submodule(target)
            pair = torch.nn.Module()
            pair.down = torch.nn.Linear(layer.in_features, layer.r["default"], bias=False)
            pair.up = torch.nn.Linear(layer.r["default"], layer.out_features, bias=False)
            pair.down.weight.data.copy_(layer.lora_A["default"].weight.data)
            pair.up.weight.data.copy_(layer.lora_B["default"].weight.data)
            setattr(old, old_name, pair)
        processors[name] = old
    return dict(AttnProcsLayers(processors).state_dict())


def make_layout_lora(model_dir: Path, target: Path, layout: str, *, rank: int = 4, seed: int = 0) -> Path:
    """Write the tiny model's LoRA in ``layout`` (one of ``LAYOUTS``) to ``target``; deterministic for ``seed``."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.training_utils import _collate_lora_metadata
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from worker.pipeline.profiles import resolve_profile

    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    base = resolve_profile("tiny", model_dir).base_dir
    kind, _, extra = layout.partition("+")
    unet = _adapted(UNet2DConditionModel.from_pretrained(base / "unet"), UNET_TARGETS, rank, seed)
    encoders: dict[str, Any] = {}
    if extra == "te":
        encoders["text_encoder"] = _adapted(CLIPTextModel.from_pretrained(base / "text_encoder"), TEXT_TARGETS,
                                            rank, seed + 1)
        encoders["text_encoder_2"] = _adapted(CLIPTextModelWithProjection.from_pretrained(base / "text_encoder_2"),
                                              TEXT_TARGETS, rank, seed + 2)
    layers = {"unet": get_peft_model_state_dict(unet)}
    for name, model in encoders.items():  # a PeftModel names the wrapped model's modules under base_model.model
        state = get_peft_model_state_dict(model)
        layers[name] = {key.removeprefix("base_model.model."): value for key, value in state.items()}
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind == "kohya":
        prefixed = {f"{component}.{key}": value for component, state in layers.items() for key, value in state.items()}
        save_file({k: v.contiguous() for k, v in convert_state_dict_to_kohya(prefixed).items()}, target)
        return target
    if kind == "diffusers":
        layers = {component: convert_state_dict_to_diffusers(state) for component, state in layers.items()}
    elif kind == "attn-procs":
        layers = {"unet": _attention_processor_layout(unet)}
    metadata = _collate_lora_metadata({"unet": unet, **encoders}) if kind == "peft" else {}
    for config in metadata.values():
        config["target_modules"] = sorted(config["target_modules"])
    StableDiffusionXLPipeline.save_lora_weights(
        target.parent,
        unet_lora_layers=layers["unet"],
        text_encoder_lora_layers=layers.get("text_encoder"),
        text_encoder_2_lora_layers=layers.get("text_encoder_2"),
        weight_name=target.name,
        **metadata,
    )
    target.chmod(0o644)
    return target
