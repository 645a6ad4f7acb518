"""Compile once: with ``torch_compile`` the tiny UNet is compiled through a counting dynamo backend (it records each
graph and runs it as traced; no inductor needed) and a sequence of jobs that varies the LoRA (swap, scale, none),
the number of people, the style, guidance and ``num_images`` at one size compiles one graph. Each image is the image
an uncompiled engine makes (the fixed batch layout changes nothing but the shapes), within float noise."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.lora_layouts import make_layout_lora
from worker.pipeline import Engine, GenerationRequest, make_tiny_lora, resolve_profile
from worker.pipeline.engine import IDENTITY, STYLE, EngineOptions, VariantUnavailable
from worker.pipeline.lora import LoraLoadFailed, LoraRequest

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]

BASE: dict[str, Any] = {"prompt": "a garden in spring", "negative_prompt": None, "width": 64, "height": 64,
                        "steps": 2, "guidance_scale": 5.0, "seed": 11, "num_images": 1}
NOISE = 1  # the same picture up to float noise (ml-facts: ~1/255)


class Graphs:
    """A dynamo backend that counts the graphs it is given and runs each as traced."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, graph: torch.fx.GraphModule, _example_inputs: list[torch.Tensor]) -> Any:
        self.count += 1
        return graph.forward


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path) -> Iterator[tuple[Engine, Engine, Graphs]]:
    threads = torch.get_num_threads()
    graphs = Graphs()
    profile = resolve_profile("tiny", tiny_model_dir)
    compiled = Engine.load(profile, device="cpu", num_threads=1, options=EngineOptions(
        torch_compile=True, compile_sizes=((64, 64),), lora_target_rank=8, compile_backend=graphs))
    eager = Engine.load(profile, device="cpu", num_threads=1)
    yield compiled, eager, graphs
    torch._dynamo.reset()
    torch.set_num_threads(threads)


def style(path: Path, scale: float = 0.8) -> LoraRequest:
    data = path.read_bytes()
    return LoraRequest(key=hashlib.sha256(data).hexdigest(), scale=scale, fetch=lambda: data)


def test_a_varied_sequence_of_jobs_compiles_one_graph_and_matches_the_uncompiled_images(
        engines: tuple[Engine, Engine, Graphs], tiny_model_dir: Path, tmp_path: Path) -> None:
    compiled, eager, graphs = engines
    a = style(make_tiny_lora(tiny_model_dir, tmp_path / "a.safetensors", rank=4, seed=1))
    b = style(make_tiny_lora(tiny_model_dir, tmp_path / "b.safetensors", rank=8, alpha=4, seed=2))
    kohya = style(make_layout_lora(tiny_model_dir, tmp_path / "k.safetensors", "kohya", rank=2, seed=3))
    faces = [compiled.embed(IDENTITY, Image.new("RGB", (32, 32), color)) for color in ("red", "blue")]
    reference = compiled.embed(STYLE, Image.new("RGB", (32, 32), "green"))
    halves = ((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 1.0))
    jobs: list[tuple[str, dict[str, Any]]] = [
        ("plain", {}),
        ("a LoRA", {"lora": a}),
        ("its scale", {"lora": style(tmp_path / "a.safetensors", 1.3)}),
        ("another rank and alpha", {"lora": b}),
        ("kohya, rank 2", {"lora": kohya}),
        ("no LoRA", {}),
        ("one person", {"identity_embeds": faces[:1]}),
        ("two people in regions", {"identity_embeds": tuple(faces), "identity_regions": halves}),
        ("identity scale", {"identity_embeds": faces[:1], "identity_scale": 0.3}),
        ("a style", {"style_embeds": reference}),
        ("style scale", {"style_embeds": reference, "style_scale": 0.5}),
        ("guidance 1", {"guidance_scale": 1.0}),
        ("guidance 0", {"guidance_scale": 0.0}),
        ("three images", {"num_images": 3, "lora": b}),
        ("LoRA back", {"lora": a, "identity_embeds": faces[:1]}),
    ]
    compiles = []
    for name, changes in jobs:
        request = GenerationRequest(**{**BASE, **changes})
        result = compiled.run(request)
        compiles.append(result.compiles)
        assert result.recompiles == 0, name
        expected = eager.generate(request)
        assert len(result.images) == len(expected) == request.num_images
        for image, wanted in zip(result.images, expected, strict=True):
            difference = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(wanted, dtype=np.int16)).max()
            assert difference <= NOISE, f"{name}: {difference}"
    assert graphs.count == 1, compiles  # one graph for the size bucket, whatever the jobs varied
    assert compiles[0] == 1 and sum(compiles) == 1
    plain = np.asarray(compiled.generate(GenerationRequest(**BASE))[0], dtype=np.int16)
    styled = np.asarray(compiled.generate(GenerationRequest(**BASE, lora=a))[0], dtype=np.int16)
    assert np.abs(styled - plain).mean() > 2  # the hot-swapped LoRA does reach the image


def test_what_the_compiled_slot_cannot_hot_swap_fails_by_name_and_leaves_it_working(
        engines: tuple[Engine, Engine, Graphs], tiny_model_dir: Path, tmp_path: Path) -> None:
    compiled, eager, graphs = engines
    before = graphs.count
    wide = style(make_tiny_lora(tiny_model_dir, tmp_path / "wide.safetensors", rank=16, seed=4))
    with_te = style(make_layout_lora(tiny_model_dir, tmp_path / "te.safetensors", "peft+te", seed=5))
    for lora, message in ((wide, "rank 16 is above the compiled worker's LoRA target rank (8)"),
                          (with_te, "a compiled worker hot-swaps UNet LoRAs only")):
        with pytest.raises(LoraLoadFailed, match=re.escape(message)):
            compiled.run(GenerationRequest(**BASE, lora=lora))
    a = style(make_tiny_lora(tiny_model_dir, tmp_path / "a.safetensors", rank=4, seed=1))
    image = compiled.generate(GenerationRequest(**BASE, lora=a))[0]
    expected = eager.generate(GenerationRequest(**BASE, lora=a))[0]
    assert np.abs(np.asarray(image, dtype=np.int16) - np.asarray(expected, dtype=np.int16)).max() <= NOISE
    assert graphs.count == before


def test_a_size_outside_the_buckets_runs_uncompiled(engines: tuple[Engine, Engine, Graphs]) -> None:
    compiled, eager, graphs = engines
    before = graphs.count
    request = GenerationRequest(**{**BASE, "width": 72})
    result = compiled.run(request)
    assert (result.compiles, graphs.count) == (0, before)
    expected = eager.generate(request)[0]
    assert np.abs(np.asarray(result.images[0], dtype=np.int16) - np.asarray(expected, dtype=np.int16)).max() <= NOISE


def test_a_compiled_worker_refuses_drafts_by_name_and_its_final_jobs_still_run(
    engines: tuple[Engine, Engine, Graphs],
) -> None:
    """One hot-swap slot and a fixed graph: the draft LoRA is not loaded, a draft job fails saying why (the worker
    turns it into setup_failed), and the next final job runs on the same graph."""
    compiled, eager, graphs = engines
    assert eager.draft_error is None  # the tiny profile has the draft file: only compiling keeps it out
    with pytest.raises(VariantUnavailable, match="ILLUSTRATIONS_TORCH_COMPILE"):
        compiled.run(GenerationRequest(**{**BASE, "steps": 4, "guidance_scale": 0.0, "quality": "draft"}))
    compiled.run(GenerationRequest(**BASE))
    before = graphs.count
    result = compiled.run(GenerationRequest(**BASE))
    assert (result.compiles, graphs.count) == (0, before)


def test_a_content_scale_above_0_compiles_a_graph_per_ratio_as_documented(
        engines: tuple[Engine, Engine, Graphs]) -> None:
    compiled, eager, graphs = engines
    reference = compiled.embed(STYLE, Image.new("RGB", (32, 32), "green"))
    before = graphs.count
    for style_scale, content_scale, new_graphs in ((0.8, 0.4, 1), (0.6, 0.3, 0)):  # each compile costs ~25 s
        request = GenerationRequest(**BASE, style_embeds=reference, style_scale=style_scale,
                                    content_scale=content_scale)
        result = compiled.run(request)
        assert result.recompiles == new_graphs, (style_scale, content_scale)  # 0.6/0.3 reuses 0.8/0.4's ratio
        expected = eager.generate(request)[0]
        difference = np.abs(np.asarray(result.images[0], dtype=np.int16) - np.asarray(expected, dtype=np.int16))
        assert difference.max() <= NOISE
    assert graphs.count == before + 1


def test_graphs_made_during_jobs_are_counted_for_prometheus(caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import REGISTRY

    from worker import observability

    def value(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    compiles, recompiles = value("illustrations_torch_compiles_total"), value("illustrations_torch_recompiles_total")
    observability.compiled(1, 0)  # a bucket's first graph
    observability.compiled(0, 0)
    assert value("illustrations_torch_recompiles_total") == recompiles
    observability.compiled(2, 1)  # one graph beyond a bucket's first
    assert value("illustrations_torch_compiles_total") == compiles + 3
    assert value("illustrations_torch_recompiles_total") == recompiles + 1
    assert "the compiled UNet recompiled 1 graph(s)" in caplog.text
