"""Seconds per training step of a style LoRA, and what a checkpoint costs, on the ``tiny`` model on a CPU.

    .venv/bin/python -m bench.training [--steps 40] [--model-dir DIR] [--threads 1]

Runs ``worker.training.trainer.LoraTrainer`` (what a training worker runs) on four 64x64 pictures with captions,
one torch thread as in the tests, for each configuration below: rank, batch size, gradient checkpointing. A step is
one optimizer step (forward, noise-prediction loss, backward, clipping, AdamW). The first 5 steps are warm-up and
not counted; medians and 90th percentiles in ms. Also: the load (base model from disk, pictures encoded, LoRA
layers added) and one checkpoint (LoRA + AdamW state to safetensors bytes, and back).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from worker.pipeline.profiles import resolve_profile
from worker.training import checkpoints
from worker.training.trainer import Example, LoraTrainer, TrainerOptions, TrainingParams

WARMUP = 5
CONFIGS = [  # (rank, batch size, gradient checkpointing)
    (4, 1, False),
    (4, 1, True),
    (16, 1, False),
    (4, 2, False),
]


def examples() -> list[Example]:
    rng = np.random.default_rng(0)
    return [Example(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), f"a picture {i} in ink")
            for i in range(4)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(model_dir: Path, steps: int, threads: int) -> None:
    base = resolve_profile("tiny", model_dir).base_dir
    print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()} {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__}, {threads} thread(s)")
    print("| rank | batch | gradient checkpointing | load s | step ms (median) | step ms (p90) | checkpoint KiB | "
          "checkpoint save + restore ms |")
    print("|---|---|---|---|---|---|---|---|")
    for rank, batch, checkpointing in CONFIGS:
        params = TrainingParams(rank=rank, alpha=rank, steps=steps + WARMUP, learning_rate=1e-4, resolution=64,
                                seed=1, batch_size=batch)
        options = TrainerOptions(device="cpu", num_threads=threads, gradient_checkpointing=checkpointing)
        started = time.perf_counter()
        trainer = LoraTrainer.load(base, examples(), params, "bench", options)
        load_s = time.perf_counter() - started
        times: list[float] = []
        last = time.perf_counter()

        def on_step(step: int, loss: float, times: list[float] = times) -> bool:
            nonlocal last
            now = time.perf_counter()
            if step > WARMUP:
                times.append(now - last)
            last = now
            return True

        trainer.run(on_step)
        started = time.perf_counter()
        data = checkpoints.to_bytes(trainer.checkpoint())
        trainer.restore(checkpoints.from_bytes(data))
        checkpoint_ms = (time.perf_counter() - started) * 1000
        print(f"| {rank} | {batch} | {'on' if checkpointing else 'off'} | {load_s:.2f} | "
              f"{statistics.median(times) * 1000:.1f} | {percentile(times, 0.9) * 1000:.1f} | {len(data) / 1024:.0f} | "
              f"{checkpoint_ms:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps per configuration")
    parser.add_argument("--model-dir", type=Path, default=None, help="a tiny model (default: made in a temp dir)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.model_dir is not None:
        run(args.model_dir, args.steps, args.threads)
        return
    from worker.pipeline.tiny import make_tiny

    with tempfile.TemporaryDirectory(prefix="bench-tiny-") as folder:
        run(make_tiny(Path(folder) / "tiny"), args.steps, args.threads)


if __name__ == "__main__":
    main()
