#!/usr/bin/env bash
# Seconds per SDXL image on this machine's GPU (bench/gpu.py; its docstring says what is measured).
#   bench/gpu.sh                      # 1024x1024, 30 steps, batch 1, bf16: plain, identity (x1, x2 with masks),
#                                     # style, LoRA, LoRA switch and hot-swap, draft (4 steps, no CFG); a compiled
#                                     # worker's engine: compile time, plain, LoRA, LoRA hot-swap, recompiles over
#                                     # varied jobs; images/hour, peak memory
#   bench/gpu.sh --no-compile --repeats 5
#   bench/gpu.sh --dry-run --no-compile   # the tiny architecture on the CPU (what the test suite runs)
#   bench/gpu.sh --dry-run --compile-backend eager   # + the compile rows, dynamo tracing only (the suite too)
# Needs the worker's Python packages (torch with CUDA, diffusers, transformers, peft): the repository's .venv when
# there is one, else PYTHON or python3. No network: weights are real when present, random otherwise.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
if [[ -n "${PYTHON:-}" ]]; then py="$PYTHON"
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3; fi
if ! "$py" -c "import torch, diffusers, transformers, peft" 2>/dev/null; then
  echo "bench/gpu.sh: $py lacks torch/diffusers/transformers/peft; install the worker extra: pip install -e '.[worker]'" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# The budget inside the script is 450 s; this is the hard stop, so a run never holds a GPU past 8 minutes.
exec timeout --signal=INT --kill-after=10 470 "$py" -m bench.gpu "$@"
