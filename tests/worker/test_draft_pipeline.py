"""``quality: draft`` on the tiny model, through the real pipeline: the profile's few-step variant (its distillation
LoRA resident beside the style slots, its scheduler, no classifier-free guidance).

UNet evaluations are counted with a forward hook on the UNet (calls and the batch each call gets); the adapters'
effect is measured on the pixels; "no reload" is watched by counting the loaders' calls while jobs run.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from shared import limits
from tests.faces import noise
from worker.pipeline import Engine, GenerationRequest, make_tiny_lora, resolve_profile
from worker.pipeline.engine import DRAFT_ADAPTER, VariantUnavailable
from worker.pipeline.lora import LoraRequest
from worker.pipeline.profiles import DRAFT, draft_missing, missing_files
from worker.pipeline.tiny import DRAFT_ALPHA, DRAFT_RANK

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

BASE: dict[str, Any] = {"prompt": "a kitchen in the morning", "negative_prompt": None, "width": 64, "height": 64,
                        "seed": 5, "num_images": 1}
DRAFT_REQUEST: dict[str, Any] = {**BASE, "steps": DRAFT.steps, "guidance_scale": DRAFT.guidance_scale,
                                 "quality": "draft"}
FINAL_REQUEST: dict[str, Any] = {**BASE, "steps": 3, "guidance_scale": 5.0}


def load(model_dir: Path) -> Engine:
    return Engine.load(resolve_profile("tiny", model_dir), device="cpu", num_threads=1)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    threads = torch.get_num_threads()
    yield load(tiny_model_dir)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def style_lora(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoraRequest:
    data = make_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("style") / "ink.safetensors", seed=3,
                          strength=1.5).read_bytes()
    return LoraRequest(key=hashlib.sha256(data).hexdigest(), scale=0.8, fetch=lambda: data)


def pixels(engine: Engine, **request: Any) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in engine.generate(GenerationRequest(**request))]


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


class UnetCalls:
    """Counts the UNet's forward calls and the batch each one gets (a forward hook on the real module)."""

    def __init__(self, engine: Engine) -> None:
        self.batches: list[int] = []
        self._handle = engine.pipe.unet.register_forward_hook(self._seen, with_kwargs=True)

    def _seen(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
        sample = kwargs["sample"] if "sample" in kwargs else args[0]
        self.batches.append(int(sample.shape[0]))

    def __enter__(self) -> UnetCalls:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


# --- the variant's file and defaults ----------------------------------------------------------------------------
def test_the_api_defaults_are_the_variants_own() -> None:
    assert (DRAFT.steps, DRAFT.guidance_scale) == (limits.DEFAULT_DRAFT_STEPS, limits.DEFAULT_DRAFT_GUIDANCE)
    # The model card of ByteDance/SDXL-Lightning (4-step LoRA): Euler, trailing timesteps, 4 steps, guidance 0.
    assert (DRAFT.repo_id, DRAFT.weight) == ("ByteDance/SDXL-Lightning", "sdxl_lightning_4step_lora.safetensors")
    assert DRAFT.scheduler == "EulerDiscreteScheduler"
    assert dict(DRAFT.scheduler_config) == {"timestep_spacing": "trailing"}


def test_make_tiny_writes_a_kohya_draft_lora_that_loads_into_every_block_layer(tiny_model_dir: Path,
                                                                              engine: Engine) -> None:
    profile = resolve_profile("tiny", tiny_model_dir)
    assert draft_missing(profile) is None
    assert profile.draft_file == tiny_model_dir / "draft" / DRAFT.weight
    tensors = load_file(profile.draft_file)
    layers = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in tensors}
    assert all(layer.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_"))
               for layer in layers)  # the SGM names kohya (and SDXL-Lightning's file) use
    assert all(f"{layer}.alpha" in tensors and f"{layer}.lora_down.weight" in tensors for layer in layers)
    adapted = [module for module in engine.pipe.unet.modules()
               if hasattr(module, "lora_A") and DRAFT_ADAPTER in module.lora_A]
    assert len(adapted) == len(layers)  # every layer of the file found its module: none dropped by the conversion
    assert {module.scaling[DRAFT_ADAPTER] for module in adapted} == {DRAFT_ALPHA / DRAFT_RANK}  # its alphas are read
    assert any(isinstance(module.base_layer, torch.nn.Conv2d) for module in adapted)  # convolutions too


# --- a draft: its steps, no guidance ----------------------------------------------------------------------------
@pytest.mark.parametrize("num_images", [1, 2])
def test_a_draft_runs_exactly_its_steps_without_cfg_doubling(engine: Engine, num_images: int) -> None:
    with UnetCalls(engine) as calls:
        engine.generate(GenerationRequest(**{**DRAFT_REQUEST, "num_images": num_images}))
    assert calls.batches == [num_images] * DRAFT.steps
    with UnetCalls(engine) as calls:  # the same counting sees guidance double the batch of a final
        engine.generate(GenerationRequest(**{**FINAL_REQUEST, "num_images": num_images}))
    assert calls.batches == [2 * num_images] * FINAL_REQUEST["steps"]


def test_identity_and_style_adapters_run_in_a_draft_without_negative_embeddings(engine: Engine) -> None:
    """Both IP-Adapters change a draft, and their image embeddings reach the UNet with no negative half."""
    plain = pixels(engine, **DRAFT_REQUEST)[0]
    seen: list[list[tuple[int, ...]]] = []

    def embeds(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        added = kwargs.get("added_cond_kwargs") or {}
        seen.append([tuple(embed.shape) for embed in added.get("image_embeds", [])])

    handle = engine.pipe.unet.register_forward_pre_hook(embeds, with_kwargs=True)
    try:
        people = pixels(engine, **DRAFT_REQUEST, identity_images=(noise(1), noise(2)), style_image=noise(3))[0]
    finally:
        handle.remove()
    assert mean_diff(plain, people) > 1.0
    identity, style = seen[0]
    assert identity[:2] == (1, 2) and style[:2] == (1, 1)  # batch 1 (no negative half), two people, one style


def test_the_draft_scheduler_is_the_model_cards_and_final_keeps_its_own(engine: Engine) -> None:
    engine.generate(GenerationRequest(**DRAFT_REQUEST))
    draft = engine.pipe.scheduler
    assert type(draft).__name__ == DRAFT.scheduler and draft.config.timestep_spacing == "trailing"
    assert list(draft.timesteps) == [999, 749, 499, 249]  # trailing: the 4 steps end at the last timestep
    engine.generate(GenerationRequest(**FINAL_REQUEST))
    final = engine.pipe.scheduler
    assert final is engine.schedulers["final"] and final.config.timestep_spacing == "leading"
    assert {key: value for key, value in draft.config.items() if key != "timestep_spacing"} == \
        {key: value for key, value in final.config.items() if key != "timestep_spacing"}


# --- a style LoRA and the draft LoRA together -------------------------------------------------------------------
def test_a_style_lora_applies_to_a_draft_beside_the_draft_lora(engine: Engine, style_lora: LoraRequest) -> None:
    draft_only = pixels(engine, **DRAFT_REQUEST)[0]
    both = pixels(engine, **DRAFT_REQUEST, lora=style_lora)[0]
    assert set(engine.pipe.get_active_adapters()) == {DRAFT_ADAPTER, engine.loras.resident()[style_lora.key]}
    # The same request as a final: the style alone (the draft LoRA off, the base scheduler).
    style_only = pixels(engine, **{**DRAFT_REQUEST, "quality": "final"}, lora=style_lora)[0]
    assert engine.pipe.get_active_adapters() == [engine.loras.resident()[style_lora.key]]
    assert mean_diff(both, draft_only) > 1.0  # the style reaches the draft
    assert mean_diff(both, style_only) > 1.0  # and so does the draft LoRA, with the style active
    assert engine.generate(GenerationRequest(**DRAFT_REQUEST, lora=style_lora))[0].tobytes() == \
        engine.generate(GenerationRequest(**DRAFT_REQUEST, lora=style_lora))[0].tobytes()


# --- switching on one warm worker ------------------------------------------------------------------------------
def counting(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, counts: dict[str, int]) -> None:
    """Count the calls of ``owner.name`` (a class or static method), which still runs."""
    original = getattr(owner, name)
    key = f"{getattr(owner, '__name__', owner)}.{name}"
    counts[key] = 0

    def counted(*args: Any, **kwargs: Any) -> Any:
        counts[key] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


def test_draft_then_final_on_one_warm_engine_loads_nothing(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    before = pixels(engine, **FINAL_REQUEST)[0]
    pipe, unet = engine.pipe, engine.pipe.unet
    counts: dict[str, int] = {}
    counting(monkeypatch, diffusers.StableDiffusionXLPipeline, "from_pretrained", counts)
    counting(monkeypatch, diffusers.UNet2DConditionModel, "from_pretrained", counts)
    counting(monkeypatch, diffusers.StableDiffusionXLPipeline, "load_lora_weights", counts)
    counting(monkeypatch, diffusers.EulerDiscreteScheduler, "from_pretrained", counts)
    counting(monkeypatch, diffusers.EulerDiscreteScheduler, "from_config", counts)
    for quality in ("draft", "final", "draft", "draft", "final"):
        engine.generate(GenerationRequest(**(DRAFT_REQUEST if quality == "draft" else FINAL_REQUEST)))
    after = pixels(engine, **FINAL_REQUEST)[0]
    assert set(counts.values()) == {0}, counts
    assert engine.pipe is pipe and engine.pipe.unet is unet
    assert (after == before).all()  # the draft LoRA is wholly off for a final: the very same image


# --- a worker without the draft file ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def without_draft(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("no-draft") / "tiny"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "draft" / DRAFT.weight).unlink()
    return copy


def test_without_the_draft_file_finals_run_and_drafts_name_the_file(without_draft: Path, engine: Engine) -> None:
    profile = resolve_profile("tiny", without_draft)
    assert missing_files(profile) == []  # the profile is complete: the draft file is optional
    assert draft_missing(profile) == f"draft/{DRAFT.weight}"
    bare = load(without_draft)
    assert bare.draft_error is not None and f"draft/{DRAFT.weight}" in bare.draft_error
    assert "make-tiny" in bare.draft_error
    assert (pixels(bare, **FINAL_REQUEST)[0] == pixels(engine, **FINAL_REQUEST)[0]).all()
    with pytest.raises(VariantUnavailable, match=DRAFT.weight):
        bare.generate(GenerationRequest(**DRAFT_REQUEST))
    assert pixels(bare, **FINAL_REQUEST)[0].shape == (64, 64, 3)  # and it still runs finals afterwards


def test_an_unknown_quality_is_refused(engine: Engine) -> None:
    with pytest.raises(ValueError, match="`quality` must be one of final, draft"):
        engine.generate(GenerationRequest(**{**DRAFT_REQUEST, "quality": "sketch"}))

