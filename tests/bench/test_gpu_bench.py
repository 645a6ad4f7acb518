"""bench/gpu.sh dry-runs on the CPU: the tiny architecture built from bench/configs/tiny with random weights, every
row through the engine (adapters, LoRA slot), so the script works before it first meets a GPU."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

ROWS = ("load / build", "plain", "+ identity adapter", "+ identity x2, masks", "+ style adapter", "+ LoRA",
        "LoRA switch (resident)", "LoRA hot-swap (new file)", "draft", "draft + identity + style",
        "images/hour", "peak memory", "total wall")
COMPILE_ROWS = ("torch.compile (first call)", "+ torch.compile", "+ torch.compile + LoRA", "LoRA hot-swap (compiled)",
                "recompiles")
UNITS = {"images/hour": "images/h", "peak memory": "GiB", "recompiles": "graphs"}


def dry_run(tmp_path: Path, *args: str, timeout: int = 180) -> tuple[dict[str, list[str]], list[dict[str, object]]]:
    """bench/gpu.sh --dry-run: the table printed last, as {row: cells}, and the rows written as JSON."""
    out = tmp_path / "rows.json"
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run", *args, "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.rstrip().splitlines()
    table: list[str] = []
    for line in reversed(lines):  # the table is printed last
        if not line.startswith("|"):
            break
        table.insert(0, line)
    assert table[0].startswith("| row | seconds |"), result.stdout
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    return rows, json.loads(out.read_text())


def value(name: str, cells: list[str]) -> float:
    """The row's number, in its unit (seconds unless UNITS says otherwise)."""
    unit = UNITS.get(name, "s")
    number = re.match(rf"([0-9.]+) {re.escape(unit)}", cells[1])
    assert number, (name, cells)
    return float(number.group(1))


def test_dry_run_prints_every_row_with_finite_numbers_last(tmp_path: Path) -> None:
    rows, recorded = dry_run(tmp_path, "--no-compile")
    assert tuple(rows) == ROWS
    for name, cells in rows.items():
        number = value(name, cells)
        assert math.isfinite(number), (name, cells)
        assert number > 0, (name, cells)
        if name not in ("total wall", "images/hour"):
            assert math.isfinite(float(cells[3])), (name, cells)  # peak memory (GiB; max RSS on the CPU)
    assert rows["plain"][2] == "1.00x"
    assert "random weights made on cpu" in rows["load / build"][4]
    assert "hotswap" in rows["LoRA hot-swap (new file)"][4]  # a same-rank file replaced a full slot in place
    seconds = {str(row["name"]): row["seconds"] for row in recorded}  # unrounded (the table rounds to 1 ms)
    assert isinstance(seconds["plain"], float) and isinstance(seconds["images/hour"], float)
    assert seconds["images/hour"] == pytest.approx(3600 / seconds["plain"])
    assert value("images/hour", rows["images/hour"]) == pytest.approx(seconds["images/hour"], abs=0.5)
    peaks = [float(cells[3]) for name, cells in rows.items() if name not in ("total wall", "images/hour")]
    assert value("peak memory", rows["peak memory"]) == pytest.approx(max(peaks), abs=0.01)
    assert [row["name"] for row in recorded] == list(ROWS[:-1])


def test_dry_run_counts_the_graphs_compiled_over_varied_jobs(tmp_path: Path) -> None:
    """The compile rows on a second engine loaded as a compiled worker loads one (``EngineOptions(torch_compile)``:
    fixed batch layout, one hot-swap slot), with dynamo's `eager` backend (tracing only, no inductor): after the
    first call's graph, the varied jobs, the timed calls and the LoRA hot-swaps compile nothing (what a GPU run must
    show too)."""
    rows, recorded = dry_run(tmp_path, "--compile-backend", "eager", timeout=300)
    assert tuple(rows) == ROWS[:-3] + COMPILE_ROWS + ROWS[-3:]
    first = re.search(r"(\d+) graph\(s\)", rows["torch.compile (first call)"][4])
    assert first and int(first.group(1)) >= 1, rows["torch.compile (first call)"]  # the first call compiles
    assert "EngineOptions(torch_compile, 64x64" in rows["torch.compile (first call)"][4]
    for name in ("+ torch.compile", "+ torch.compile + LoRA", "LoRA hot-swap (compiled)"):
        assert 0 < value(name, rows[name]) < math.inf, rows[name]
    swap = rows["LoRA hot-swap (compiled)"][4]
    assert "in place (hotswap)" in swap and "resident" not in swap and "; 0 graph(s) compiled" in swap, swap
    assert "failed" not in rows["recompiles"][4], rows["recompiles"]
    assert value("recompiles", rows["recompiles"]) == 0, rows["recompiles"]  # one fixed layout at one size
    assert "0 over 9 varied jobs" in rows["recompiles"][4], rows["recompiles"]
    assert [row["name"] for row in recorded] == list(ROWS[:-3] + COMPILE_ROWS + ROWS[-3:-1])


def test_full_size_configs_build_the_published_shapes() -> None:
    """The sdxl configs give SDXL base's parameter counts and the published adapters' sizes (on ``meta``: no
    memory, no time)."""
    torch = pytest.importorskip("torch")
    from diffusers import UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from bench.gpu import CONFIGS, _adapter_state, _config

    folder = CONFIGS / "sdxl"
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_config(folder, "unet"))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_config(folder, "text_encoder_2")))
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**_config(folder, "image_encoder")))
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert count(unet) == 2_567_463_684
    assert count(text_2) == 694_659_840
    assert count(encoder) == 632_076_800
    sizes = {}
    for name in ("ip_adapter_identity", "ip_adapter_style"):
        state = _adapter_state(_config(folder, name), unet, encoder, "meta", torch.bfloat16)
        assert sorted({int(key.split(".")[0]) for key in state["ip_adapter"]}) == list(range(1, 140, 2))
        sizes[name] = sum(t.numel() for part in state.values() for t in part.values())
    # ip-adapter-plus-face_sdxl_vit-h.safetensors is 848 MB and ip-adapter_sdxl_vit-h.safetensors 698 MB in fp16.
    assert round(sizes["ip_adapter_identity"] * 2 / 1e6) in range(840, 856)
    assert round(sizes["ip_adapter_style"] * 2 / 1e6) in range(690, 706)
