"""What faces and regions cost: face detection at upload, attention masks per job, against the same work without them.

    .venv/bin/python -m bench.people [--repeats 7] [--engine tiny|sdxl] [--size N] [--steps N] [--skip-upload]

1. **Upload** (CPU, the API's own work): ``shared.images.normalise`` of a subject photo with the face detector
   (``find_face=True``, what ``POST /v1/subjects`` runs) and without it, alternated, for a 1-megapixel photo
   (scikit-image's astronaut scaled to 1024x1024, JPEG) and a 25-megapixel one (5000x5000: the upload limit), one
   OpenCV thread as in the API. Median milliseconds; the difference is the detector's cost at upload.
2. **Per job** (the GPU worker's call, ``Engine.run``): the same request with 2 and with 4 people, with regions
   (per-person attention masks) and without (every person's tokens concatenated, as before masks), alternated, with
   classifier-free guidance; the people's embeddings are given (cached), so only the call is timed. ``--engine tiny``
   (default) runs the tiny random-weight model on the CPU (one torch thread); ``--engine sdxl`` builds the full-size
   SDXL architecture with random weights on the GPU (``bench.gpu.build_random``: the same arithmetic as the real
   weights, so the same time). The masks' own construction (``worker.pipeline.masks.identity_masks``) is timed
   alone too.
3. **The prompt** (``--engine tiny``): the layout phrase ("mum on the left, dad on the right") on the tiny model's
   text path: its token cost, and how far it moves the prompt embeddings (relative L2), in order, and past the
   77-token window. A random-weight model cannot say whether it helps a picture; this says what reaches the encoders.

Prints a markdown table; ``bench/README.md`` keeps the results.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per case (median)")
    parser.add_argument("--engine", choices=("tiny", "sdxl", "dry-run"), default="tiny",
                        help="tiny: the tiny model on the CPU; sdxl: full-size random weights on the GPU; dry-run: "
                             "the sdxl path with the tiny configs on the CPU (checks the script, times nothing real)")
    parser.add_argument("--size", type=int, default=None, help="picture side (tiny 256, sdxl 1024)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (tiny 4, sdxl 30)")
    parser.add_argument("--skip-upload", action="store_true", help="only the per-job part")
    parser.add_argument("--skip-jobs", action="store_true", help="only the upload part")
    return parser.parse_args(argv)


def alternated(repeats: int, cases: dict[str, Callable[[], Any]], sync: Callable[[], None] = lambda: None,
               warmups: int = 1, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds of each case, the cases run in turn ``repeats`` times (after ``warmups`` untimed rounds), by
    ``clock`` (wall time; ``time.process_time``: this process's CPU time, which other load on the machine barely
    moves)."""
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(warmups + repeats):
        for name, call in cases.items():
            sync()
            started = clock()
            call()
            sync()
            if round_ >= warmups:
                samples[name].append(clock() - started)
    return {name: statistics.median(values) for name, values in samples.items()}


def upload_part(repeats: int) -> list[str]:
    from PIL import Image

    from shared import faces
    from shared.images import normalise
    from tests.faces import astronaut

    rows = []
    for label, side in (("1 MP photo (1024x1024 JPEG)", 1024), ("25 MP photo (5000x5000 JPEG)", 5000)):
        buffer = io.BytesIO()
        astronaut().resize((side, side), Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
        data = buffer.getvalue()
        found = normalise(data, find_face=True).face
        assert found is not None and found.box is not None, "the astronaut's face must be found"
        image = Image.open(io.BytesIO(data)).convert("RGB")
        cases = {"without": partial(normalise, data), "with": partial(normalise, data, find_face=True),
                 "detector": partial(faces.detect, image)}
        for clock, name in ((time.perf_counter, "wall"), (time.process_time, "CPU")):
            times = alternated(repeats, cases, clock=clock)
            extra = times["with"] - times["without"]
            rows.append(f"| {label} | {name} | {times['without'] * 1000:.0f} ms | {times['with'] * 1000:.0f} ms | "
                        f"{extra * 1000:+.0f} ms ({times['with'] / times['without']:.2f}x) | "
                        f"{times['detector'] * 1000:.0f} ms |")
    header = ["| upload | clock | normalise | normalise + face detector | extra | detector alone |",
              "|---|---|---|---|---|---|"]
    return header + rows


def job_part(args: argparse.Namespace) -> tuple[list[str], str]:
    import numpy as np
    import PIL.Image
    import torch

    from shared.regions import columns
    from worker.pipeline.engine import IDENTITY, GenerationRequest
    from worker.pipeline.masks import identity_masks

    sync: Callable[[], None] = lambda: None  # noqa: E731
    if args.engine == "tiny":
        import tempfile

        from worker.pipeline import Engine, make_tiny, resolve_profile

        folder = Path(tempfile.mkdtemp(prefix="bench-people-")) / "tiny"
        profile = resolve_profile("tiny", make_tiny(folder, seed=0))
        engine = Engine.load(profile, device="cpu", num_threads=1)
        size, steps, where = args.size or 256, args.steps or 4, "tiny model, CPU, 1 torch thread"
        prompt_rows = prompt_part(engine, profile.base_dir / "tokenizer")
    elif args.engine == "dry-run":
        from bench.gpu import CONFIGS, build_random

        engine, _ = build_random(CONFIGS / "tiny", "cpu", torch.float32)
        size, steps, where, prompt_rows = args.size or 128, args.steps or 2, "dry run: tiny configs, CPU", []
    else:
        from bench.gpu import CONFIGS, build_random

        engine, _ = build_random(CONFIGS / "sdxl", "cuda", torch.bfloat16)
        size, steps = args.size or 1024, args.steps or 30
        where = f"full-size SDXL (random weights), {torch.cuda.get_device_name(0)}, bf16"
        sync = torch.cuda.synchronize
        prompt_rows = []
    rng = np.random.default_rng(0)
    photos = [PIL.Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)) for _ in range(4)]
    embeds = tuple(engine.embed(IDENTITY, photo) for photo in photos)
    base = GenerationRequest(prompt="four siblings on the porch, watercolour", negative_prompt=None, width=size,
                             height=size, steps=steps, guidance_scale=7.5, seed=1, num_images=1)
    rows = ["| people | clock | without masks | with masks | extra | masks built alone |", "|---|---|---|---|---|---|"]
    # On the CPU (one torch thread) this process's CPU time too, which other load on the machine barely moves.
    clocks = [(time.perf_counter, "wall")] + ([(time.process_time, "CPU")] if engine.device == "cpu" else [])
    for people in (2, 4):
        plain = replace(base, identity_embeds=embeds[:people])
        masked = replace(plain, identity_regions=tuple(columns(people)))
        cases = {"without": partial(engine.run, plain), "with": partial(engine.run, masked),
                 "masks": partial(identity_masks, engine.mask_grid, columns(people), size, size, device=engine.device)}
        for clock, name in clocks:
            times = alternated(args.repeats, cases, sync, clock=clock)
            extra = times["with"] - times["without"]
            rows.append(f"| {people} | {name} | {times['without']:.3f} s | {times['with']:.3f} s | "
                        f"{extra:+.3f} s ({times['with'] / times['without']:.3f}x) | {times['masks'] * 1000:.2f} ms |")
    # Swapping two people's photos between the regions: what the picture does with masks, and without them.
    swap = []
    for label, regions in (("with masks", tuple(columns(2))), ("without masks", ())):
        first = replace(base, identity_embeds=embeds[:2], identity_regions=regions)
        swapped = replace(first, identity_embeds=(embeds[1], embeds[0]))
        a, b = (np.asarray(engine.run(r).images[0], dtype=np.int16) for r in (first, swapped))
        swap.append(f"{label}: mean {float(np.abs(a - b).mean()):.2f}/255, max {int(np.abs(a - b).max())}/255")
    rows += ["", f"Two people's photos swapped between the columns changes the picture by: {'; '.join(swap)}."]
    note = f"{where}; {size}x{size}, {steps} steps, guidance 7.5, {args.repeats} alternated calls per case (median)"
    return [*rows, *(["", *prompt_rows] if prompt_rows else [])], note


def prompt_part(engine: Any, tokenizer_dir: Path) -> list[str]:
    """The layout phrase on the tiny model's text path: what it costs in tokens, and whether the text encoders read
    it (the prompt embeddings move), read its order (swapping who is on the left moves them), and ignore it past
    CLIP's 77-token window (why the prompt builder places it right after the user's prompt)."""
    import torch

    from api.clip_tokens import ClipTokenCounter, EstimatedTokenCounter

    def embeds(text: str) -> torch.Tensor:
        with torch.inference_mode():
            prompt, _, pooled, _ = engine.pipe.encode_prompt(text, device=engine.device, num_images_per_prompt=1,
                                                             do_classifier_free_guidance=False)
        return torch.cat([prompt.flatten(), pooled.flatten()])

    def moved(a: str, b: str) -> str:
        first, second = embeds(a), embeds(b)
        return f"{float((first - second).norm() / first.norm()):.3f}"

    tiny, estimate = ClipTokenCounter(tokenizer_dir), EstimatedTokenCounter()
    user = "a picnic"
    two = f"{user}, mum on the left, dad on the right"
    swapped = f"{user}, dad on the left, mum on the right"
    four = f"{user}, ann on the far left, ben left of centre, cat right of centre, dan on the far right"
    filler = "a picnic " * 40  # past the window on both tokenizers
    rows = ["| prompt | tokens (tiny BPE) | tokens (API estimate) | embeddings moved vs the user's prompt |",
            "|---|---|---|---|"]
    for label, text in (("user's prompt", user), ("+ 2 people", two), ("+ 2 people, swapped", swapped),
                        ("+ 4 people", four)):
        rows.append(f"| {label}: `{text}` | {tiny.count(text)} | {estimate.count(text)} | "
                    f"{moved(user, text) if text != user else '0'} |")
    rows.append(f"| 2 people vs the same 2 swapped | | | {moved(two, swapped)} |")
    rows.append(f"| 2 people past the 77-token window vs none | | | {moved(filler, filler + ', mum on the left')} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    import cv2

    print(f"Python {platform.python_version()}, OpenCV {cv2.__version__}, {os.cpu_count()} CPUs", flush=True)
    out = []
    if not args.skip_upload:
        out += ["", *upload_part(args.repeats)]
    if not args.skip_jobs:
        rows, note = job_part(args)
        out += ["", note, "", *rows]
    print("\n".join(out))
    print(f"\n(wall {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
