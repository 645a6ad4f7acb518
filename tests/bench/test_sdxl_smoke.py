"""bench/sdxl_smoke.py on the tiny configs (--dry-run): the profile folder it writes (published file names, the
original IP-Adapter key format, tokenizer files) is complete for ``missing_files`` and loads through ``Engine.load``
(diffusers' ``load_ip_adapter`` loads strictly), and the job with two masked subjects, a style and a LoRA runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.helpers import ROOT

PHASES = ("write", "Engine.load", "embed 3 references", "job", "job again (LoRA warm)", "total wall")


def test_the_dry_run_writes_a_profile_the_engine_loads_and_runs_the_whole_job() -> None:
    result = subprocess.run([sys.executable, "-m", "bench.sdxl_smoke", "--dry-run", "--threads", "1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")][1:]
    rows = {cells[0]: cells[1] for cells in ([c.strip() for c in line.strip("|").split("|")] for line in table)}
    assert tuple(rows) == PHASES
    assert "torch.bfloat16" in rows["Engine.load"]
    assert "identity (1, 17, 32) x2" in rows["embed 3 references"]  # plus-face: the penultimate hidden states
    assert "LoRA slot load" in rows["job"]
    assert "64x64 image" in rows["job"]
    for name in PHASES:
        peak = re.search(r"peak RSS ([0-9.]+) GiB", rows[name])
        assert peak, (name, rows[name])
        assert float(peak.group(1)) > 0
