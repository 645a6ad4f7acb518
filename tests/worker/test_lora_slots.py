"""LoRA slots on the tiny model: real LoRA files (saved with adapter metadata) loaded through load_lora_weights.

Each style changes the image; a job without a style gets the baseline back; one job's LoRA never reaches another
job's image; the least recently used slot is replaced, in place (hot-swap) when rank, alpha and layers match.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from shared.lora_files import InvalidLoraFile, inspect_lora
from worker.pipeline import Engine, GenerationRequest, make_tiny_lora, resolve_profile
from worker.pipeline.engine import EngineOptions
from worker.pipeline.lora import LoraLoadFailed, LoraRequest

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

BASE: dict[str, Any] = {"prompt": "a garden in spring", "negative_prompt": None, "width": 64, "height": 64,
                        "steps": 2, "guidance_scale": 5.0, "seed": 11, "num_images": 1}
# After a LoRA is disabled or at weight 0 the image is the baseline up to float noise (ml-facts: ~1/255).
NOISE = 1


@pytest.fixture(scope="module")
def loras(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("loras")
    specs = {"a": (4, 1), "b": (4, 2), "c": (4, 3), "wide": (8, 4)}
    return {name: make_tiny_lora(tiny_model_dir, folder / f"{name}.safetensors", rank=rank, seed=seed).read_bytes()
            for name, (rank, seed) in specs.items()}


def load_engine(model_dir: Path, slots: int) -> Engine:
    return Engine.load(resolve_profile("tiny", model_dir), device="cpu", num_threads=1,
                       options=EngineOptions(lora_slots=slots))


@pytest.fixture
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    threads = torch.get_num_threads()
    yield load_engine(tiny_model_dir, slots=2)
    torch.set_num_threads(threads)


def style(data: bytes, scale: float = 0.8) -> LoraRequest:
    return LoraRequest(key=hashlib.sha256(data).hexdigest(), scale=scale, fetch=lambda: data)


def pixels(engine: Engine, lora: LoraRequest | None = None, **changes: Any) -> np.ndarray:
    image = engine.generate(GenerationRequest(**{**BASE, **changes}, lora=lora))[0]
    return np.asarray(image, dtype=np.int16)


def diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_a_lora_changes_the_output_and_a_job_without_one_gets_the_baseline(engine: Engine,
                                                                           loras: dict[str, bytes]) -> None:
    baseline = pixels(engine)
    styled = pixels(engine, style(loras["a"]))
    assert diff(styled, baseline) > 2
    assert diff(pixels(engine, style(loras["a"], scale=1.5)), styled) > 1  # lora_scale matters
    assert np.abs(pixels(engine) - baseline).max() <= NOISE  # disabled: back to the baseline
    assert np.abs(pixels(engine, style(loras["a"], scale=0.0)) - baseline).max() <= NOISE
    assert np.array_equal(pixels(engine, style(loras["a"])), styled)  # resident: same image again


def test_one_jobs_lora_never_reaches_another_jobs_image(tiny_model_dir: Path, engine: Engine,
                                                        loras: dict[str, bytes]) -> None:
    # Alone: B's image on an engine that never saw A.
    alone = load_engine(tiny_model_dir, slots=2)
    b_alone = pixels(alone, style(loras["b"]))
    # Shared: A runs first and stays resident in the other slot while B runs.
    a_first = pixels(engine, style(loras["a"]))
    b_after_a = pixels(engine, style(loras["b"]))
    assert set(engine.loras.resident()) == {style(loras["a"]).key, style(loras["b"]).key}
    assert np.abs(b_after_a - b_alone).max() <= NOISE
    assert diff(b_after_a, a_first) > 2
    assert np.abs(pixels(engine, style(loras["a"])) - a_first).max() <= NOISE  # and B never reached A


def test_least_recently_used_slot_is_replaced_hot_swapped_when_shapes_match(tiny_model_dir: Path, engine: Engine,
                                                                           loras: dict[str, bytes]) -> None:
    a, b, c, wide = (style(loras[name]) for name in ("a", "b", "c", "wide"))
    first = engine.run(GenerationRequest(**BASE, lora=a)).lora
    engine.run(GenerationRequest(**BASE, lora=b))
    again = engine.run(GenerationRequest(**BASE, lora=a)).lora  # a is now the most recently used
    assert first is not None
    assert again is not None
    assert again.resident
    assert again.adapter == first.adapter
    swapped = engine.run(GenerationRequest(**BASE, lora=c))  # replaces b, the least recently used
    assert swapped.lora is not None
    assert not swapped.lora.resident
    assert swapped.lora.hotswapped  # same rank/alpha
    assert set(engine.loras.resident()) == {a.key, c.key}
    # A hot-swapped slot gives what a fresh load gives.
    fresh = load_engine(tiny_model_dir, slots=1)
    c_fresh = pixels(fresh, c)
    assert np.abs(np.asarray(swapped.images[0], dtype=np.int16) - c_fresh).max() <= NOISE
    # Another rank cannot swap in place: the slot (now LRU: a) is emptied and loaded afresh.
    other = engine.run(GenerationRequest(**BASE, lora=wide)).lora
    assert other is not None
    assert not other.hotswapped
    assert not other.resident
    assert set(engine.loras.resident()) == {c.key, wide.key}
    assert np.abs(pixels(engine, wide) - pixels(fresh, wide)).max() <= NOISE


def test_a_lora_that_does_not_fit_the_model_fails_and_leaves_the_slot_empty(engine: Engine,
                                                                          loras: dict[str, bytes],
                                                                          tmp_path: Path) -> None:
    baseline = pixels(engine)
    source = tmp_path / "a.safetensors"
    source.write_bytes(loras["a"])
    tensors = load_file(source)
    grown = {k: torch.cat([v, v], dim=1) if k.endswith("lora_A.weight") else v for k, v in tensors.items()}
    with safe_open(str(source), framework="pt") as handle:
        header = handle.metadata()
    save_file(grown, tmp_path / "bad.safetensors", metadata=header)  # in_features twice the model's
    with pytest.raises(LoraLoadFailed):
        engine.run(GenerationRequest(**BASE, lora=style((tmp_path / "bad.safetensors").read_bytes())))
    assert engine.loras.resident() == {}
    with pytest.raises(LoraLoadFailed, match="not usable"):
        engine.run(GenerationRequest(**BASE, lora=style(b"not a safetensors file")))
    assert engine.loras.resident() == {}
    assert np.abs(pixels(engine) - baseline).max() <= NOISE
    assert diff(pixels(engine, style(loras["a"])), baseline) > 2  # the slot is usable again


def test_metadata_is_reduced_to_the_weights_and_the_modules_they_target(loras: dict[str, bytes],
                                                                        tmp_path: Path) -> None:
    from worker.pipeline.lora import normalise_metadata
    from worker.pipeline.lora_layouts import read_lora

    path, original = tmp_path / "a.safetensors", tmp_path / "original.safetensors"
    path.write_bytes(loras["a"])
    original.write_bytes(loras["a"])
    with safe_open(str(path), framework="pt") as handle:
        before = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert before["unet.target_modules"] == ["to_k", "to_out.0", "to_q", "to_v"]  # suffixes: the Resampler too
    normalise_metadata(path, read_lora(path).modules)
    with safe_open(str(path), framework="pt") as handle:
        after = json.loads(handle.metadata()["lora_adapter_metadata"])
    assert set(after) == {"unet.r", "unet.lora_alpha", "unet.use_rslora", "unet.use_dora", "unet.lora_bias",
                          "unet.rank_pattern", "unet.alpha_pattern", "unet.target_modules"}
    target = after["unet.target_modules"]
    assert re.fullmatch(target, "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")
    assert not re.fullmatch(target, "encoder_hid_proj.image_projection_layers.0.layers.0.attn.to_q")
    weights, kept = load_file(original), load_file(path)
    assert weights.keys() == kept.keys()
    assert all(torch.equal(weights[k], kept[k]) for k in weights)


def test_inspect_reads_rank_alpha_and_refuses_what_is_not_a_lora(loras: dict[str, bytes], tmp_path: Path) -> None:
    path = tmp_path / "wide.safetensors"
    path.write_bytes(loras["wide"])
    info = inspect_lora(path)
    assert info.rank == 8
    assert info.alpha == 8.0
    assert info.text_encoder is False
    (tmp_path / "a.safetensors").write_bytes(loras["a"])
    assert inspect_lora(tmp_path / "a.safetensors").targets == info.targets  # same layers, another rank
    assert inspect_lora(tmp_path / "a.safetensors").swap_signature != info.swap_signature

    kohya = tmp_path / "kohya.safetensors"
    save_file({"lora_unet_down_blocks_1_attn.lora_down.weight": torch.zeros(2, 8),
               "lora_unet_down_blocks_1_attn.lora_up.weight": torch.zeros(8, 2),
               "lora_unet_down_blocks_1_attn.alpha": torch.tensor(1.0)}, kohya)
    assert (inspect_lora(kohya).rank, inspect_lora(kohya).alpha) == (2, 1.0)

    (tmp_path / "text.safetensors").write_bytes(b"not a safetensors file")
    full = tmp_path / "full.safetensors"
    save_file({"conv_in.weight": torch.zeros(2, 2)}, full)
    for bad, message in ((tmp_path / "text.safetensors", "not a readable safetensors"), (full, "contains 'lora'")):
        with pytest.raises(InvalidLoraFile, match=message):
            inspect_lora(bad)
