"""The full-size SDXL through the worker's own engine on the CPU: the wiring at real size, with peak memory and times.

    nice -n 10 .venv/bin/python -m bench.sdxl_smoke              # full size: ~13 GiB peak, minutes
    .venv/bin/python -m bench.sdxl_smoke --dry-run               # the tiny configs (bench/configs/tiny): seconds

1. Writes a complete ``sdxl`` profile folder (``worker/pipeline/profiles.py``: ``base/`` as a diffusers
   StableDiffusionXLPipeline folder, ``ip-adapter/`` as h94/IP-Adapter's) with random weights, from the published
   configs in ``bench/configs/sdxl/`` (stable-diffusion-xl-base-1.0's UNet, VAE and two CLIP text encoders,
   h94/IP-Adapter's ViT-H image encoder, the plus-face identity adapter and the basic style adapter):

   - every file under the name and with the keys of the published one, written by the libraries' own
     ``save_pretrained`` (the same key layout as the published checkpoints of these configs) and, for the two
     IP-Adapter files, in the original IP-Adapter format (``image_proj.*``, ``ip_adapter.<n>.to_{k,v}_ip.weight``)
     that diffusers converts on load;
   - in the published dtype: the VAE, both text encoders and the image encoder in float32, both IP-Adapter files in
     float16; the UNet in float16 (the dtype of the published ``diffusion_pytorch_model.fp16.safetensors``; the
     float32 file would be 10 GB on disk and in memory while loading, more than this 24 GB machine can spare);
   - tokenizers: small byte-level BPE vocabularies in the published file layout (token ids stay below the text
     encoders' 49408), as ``bench/gpu.py`` makes them.

2. ``Engine.load`` on that profile, as a worker with ``ILLUSTRATIONS_MODEL_PROFILE=sdxl`` loads it, in bfloat16 (the
   GPU worker's dtype; the engine picks float32 on a CPU, so for this process only its device resolution answers
   bfloat16: the memory is then the GPU worker's).
3. ``Engine.embed``: two identity photos (plus-face) and a style reference (basic adapter).
4. ``Engine.run``: one job at 256x256, 2 steps, guidance 7.5: two subjects, each tied to its half of the picture
   (``identity_regions``: ``Engine.identity_inputs`` builds the per-person masks), the style reference with
   InstantStyle's per-block scales, and a random rank-16 LoRA (``bench.gpu.random_lora``: saved as training saves
   one) loaded into a slot by ``LoraSlots``.

Prints the times (write, load, embed, the job with its LoRA slot load) and the peak resident memory (``ru_maxrss``)
after each phase. The folder is a temporary one unless ``--keep DIR`` (then a complete folder there is reused).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.gpu import CONFIGS, GUIDANCE, LORA_RANK, PROMPT, _adapter_state, _config, random_lora

GiB = 1024**3
PIPELINE_INDEX = {  # base/model_index.json as StableDiffusionXLPipeline.save_pretrained writes it
    "_class_name": "StableDiffusionXLPipeline",
    "feature_extractor": [None, None],
    "force_zeros_for_empty_prompt": True,
    "image_encoder": [None, None],
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB  # Linux reports KiB


@contextlib.contextmanager
def default_dtype(dtype: Any) -> Iterator[None]:
    """Modules built inside are created (and initialised) in ``dtype``: no float32 copy of the UNet in memory."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def write_profile(root: Path, configs: Path) -> dict[str, int]:
    """The ``sdxl`` profile's files under ``root`` (random weights); returns the parameters written per part.

    One module at a time is in memory: each is built, saved and dropped before the next.
    """
    import diffusers
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from worker.pipeline.profiles import resolve_profile
    from worker.pipeline.tiny import _write_tokenizer

    profile = resolve_profile("sdxl", root)
    base = profile.base_dir
    base.mkdir(parents=True)
    counts: dict[str, int] = {}
    torch.manual_seed(0)

    def save(name: str, module: Any, folder: Path) -> None:
        counts[name] = sum(p.numel() for p in module.parameters())
        module.save_pretrained(folder)  # safetensors, one file (under every library's default shard size)

    with default_dtype(torch.float16):
        save("unet", UNet2DConditionModel.from_config(_config(configs, "unet")), base / "unet")
    save("vae", AutoencoderKL.from_config(_config(configs, "vae")), base / "vae")
    save("text_encoder", CLIPTextModel(CLIPTextConfig(**_config(configs, "text_encoder"))), base / "text_encoder")
    save("text_encoder_2", CLIPTextModelWithProjection(CLIPTextConfig(**_config(configs, "text_encoder_2"))),
         base / "text_encoder_2")
    for name in ("tokenizer", "tokenizer_2"):
        _write_tokenizer(base / name, pad_with=_config(configs, name)["pad_token"])
    scheduler = {k: v for k, v in _config(configs, "scheduler").items() if not k.startswith("_")}
    EulerDiscreteScheduler.from_config(scheduler).save_pretrained(base / "scheduler")
    index = {"_diffusers_version": diffusers.__version__, **PIPELINE_INDEX}
    (base / "model_index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")

    encoder_config = CLIPVisionConfig(**_config(configs, "image_encoder"))
    save("image_encoder", CLIPVisionModelWithProjection(encoder_config), profile.image_encoder_dir)
    # The adapters' shapes come from the UNet and the encoder on `meta` (no memory); tensors in float16, each file
    # flat with the original format's prefixes, as h94/IP-Adapter publishes them.
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(_config(configs, "unet"))
        encoder = CLIPVisionModelWithProjection(encoder_config)
    profile.adapter_dir.mkdir(parents=True)
    for spec_name, weight in (("ip_adapter_identity", profile.identity_weight),
                              ("ip_adapter_style", profile.style_weight)):
        state = _adapter_state(_config(configs, spec_name), unet, encoder, "cpu", torch.float16)
        flat = {f"{part}.{key}": tensor.contiguous() for part, tensors in state.items()
                for key, tensor in tensors.items()}
        counts[spec_name] = sum(t.numel() for t in flat.values())
        save_file(flat, profile.adapter_dir / weight, metadata={"format": "pt"})
    return counts


def bf16_on_the_cpu() -> None:
    """The engine resolves ``cpu`` to float32; for this process it answers bfloat16 (what a GPU worker loads)."""
    import torch

    import worker.pipeline.engine as engine_module

    resolve = engine_module._resolve_device

    def resolve_bf16(device: str) -> tuple[str, Any]:
        device, dtype = resolve(device)
        return device, torch.bfloat16 if device == "cpu" else dtype

    engine_module._resolve_device = resolve_bf16


def run(args: argparse.Namespace, root: Path) -> list[tuple[str, str]]:
    import numpy as np
    import PIL.Image
    import torch

    from shared.regions import columns
    from worker.pipeline.engine import IDENTITY, STYLE, Engine, EngineOptions, GenerationRequest
    from worker.pipeline.lora import LoraRequest
    from worker.pipeline.profiles import missing_files, resolve_profile

    rows: list[tuple[str, str]] = []
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = CONFIGS / ("tiny" if args.dry_run else "sdxl")
    profile = resolve_profile("sdxl", root)

    # 1. The profile folder
    if missing_files(profile):
        if root.exists():
            shutil.rmtree(root)
        started = time.perf_counter()
        counts = write_profile(root, configs)
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        parts = ", ".join(f"{name} {count / 1e6:.0f} M" for name, count in counts.items())
        rows.append(("write", f"{time.perf_counter() - started:.1f} s; {sum(counts.values()) / 1e9:.2f} B parameters "
                              f"({parts}), {size / GiB:.2f} GiB on disk; peak RSS {peak_gib():.2f} GiB"))
    else:
        rows.append(("write", f"reused the complete folder {root}"))
    print(*rows[-1], flush=True)

    # 2. Engine.load, as a worker loads the sdxl profile (bfloat16)
    bf16_on_the_cpu()
    started = time.perf_counter()
    engine = Engine.load(profile, device="cpu", options=EngineOptions())
    unet = engine.pipe.unet
    rows.append(("Engine.load", f"{time.perf_counter() - started:.1f} s (engine says {engine.load_seconds:.1f} s); "
                                f"{engine.dtype}, UNet {sum(p.numel() for p in unet.parameters()) / 1e9:.2f} B "
                                f"parameters; peak RSS {peak_gib():.2f} GiB"))
    print(*rows[-1], flush=True)

    # 3. Reference embeddings: two people (plus-face) and a style reference (basic adapter)
    rng = np.random.default_rng(0)
    photos = [PIL.Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)) for _ in range(3)]
    started = time.perf_counter()
    people = (engine.embed(IDENTITY, photos[0]), engine.embed(IDENTITY, photos[1]))
    style = engine.embed(STYLE, photos[2])
    shapes = f"identity {tuple(people[0].shape)} x2, style {tuple(style.shape)}"
    rows.append(("embed 3 references", f"{time.perf_counter() - started:.1f} s; {shapes}; peak RSS "
                                       f"{peak_gib():.2f} GiB"))
    print(*rows[-1], flush=True)

    # 4. One job: two subjects in regions, the style reference, a rank-16 LoRA in a slot
    lora = random_lora(dict(unet.config), LORA_RANK)
    request = GenerationRequest(
        prompt=PROMPT, negative_prompt="blurry, low quality", width=args.size, height=args.size, steps=args.steps,
        guidance_scale=GUIDANCE, seed=1, num_images=1, identity_embeds=people, identity_scale=0.6,
        identity_regions=tuple(columns(2)), style_embeds=style, style_scale=0.8, content_scale=0.0,
        lora=LoraRequest(key=hashlib.sha256(lora).hexdigest(), scale=0.8, fetch=lambda: lora),
    )
    started = time.perf_counter()
    result = engine.run(request)
    job_s = time.perf_counter() - started
    image = np.asarray(result.images[0], dtype=np.float32)
    slot = f"LoRA slot load {result.lora.seconds:.1f} s ({len(lora) / 2**20:.0f} MiB file), " if result.lora else ""
    rows.append(("job", f"{job_s:.1f} s: {slot}prepare {result.prepare_s:.1f} s, pipeline {result.inference_s:.1f} s; "
                        f"{result.images[0].size[0]}x{result.images[0].size[1]} image, mean {image.mean():.1f}/255; "
                        f"peak RSS {peak_gib():.2f} GiB"))
    print(*rows[-1], flush=True)
    again = replace(request, seed=2)
    started = time.perf_counter()
    engine.run(again)
    rows.append(("job again (LoRA warm)", f"{time.perf_counter() - started:.1f} s; peak RSS {peak_gib():.2f} GiB"))
    print(*rows[-1], flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=None, help="image side (256; dry run 64)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps (2)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--keep", type=Path, default=None, help="write the profile here and keep it (reused)")
    parser.add_argument("--dry-run", action="store_true", help="the tiny configs, 64x64: seconds")
    args = parser.parse_args(argv)
    args.size = args.size or (64 if args.dry_run else 256)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: never a download
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = args.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sdxl-smoke-"))) / "sdxl"
        rows = run(args, root)
    import diffusers
    import torch
    import transformers

    print()
    print(f"{'tiny configs (dry run)' if args.dry_run else 'full-size SDXL'}, random weights, bfloat16 on the CPU "
          f"({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads); {args.size}x{args.size}, "
          f"{args.steps} steps, guidance {GUIDANCE}; torch {torch.__version__}, diffusers {diffusers.__version__}, "
          f"transformers {transformers.__version__}, Python {platform.python_version()}")
    print()
    print("| phase | result |")
    print("|---|---|")
    for name, text in rows:
        print(f"| {name} | {text} |")
    print(f"| total wall | {time.perf_counter() - started:.1f} s; peak RSS {peak_gib():.2f} GiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
