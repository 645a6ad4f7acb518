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

ROWS = ("load / build", "plain", "+ identity adapter", "+ style adapter", "+ LoRA", "draft", "draft + identity + style",
        "total wall")


def test_dry_run_prints_every_row_with_finite_numbers_last(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    result = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--dry-run", "--no-compile", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.rstrip().splitlines()
    table = []
    for line in reversed(lines):  # the table is printed last
        if not line.startswith("|"):
            break
        table.insert(0, line)
    assert table[0].startswith("| row | seconds |"), result.stdout
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table[2:])}
    assert tuple(rows) == ROWS
    for name, cells in rows.items():
        number = re.match(r"([0-9.]+) s", cells[1])
        assert number, (name, cells)
        assert math.isfinite(float(number.group(1))), (name, cells)
        assert float(number.group(1)) > 0, (name, cells)
        if name != "total wall":
            assert math.isfinite(float(cells[3])), (name, cells)  # peak memory (GiB; max RSS on the CPU)
    assert rows["plain"][2] == "1.00x"
    assert "random weights made on cpu" in rows["load / build"][4]
    recorded = json.loads(out.read_text())
    assert [row["name"] for row in recorded] == list(ROWS[:-1])


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
