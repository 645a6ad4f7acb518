"""Seconds per SDXL image on a GPU: plain, + identity adapter, + style adapter, + LoRA, draft, compiled.

    bench/gpu.sh [--size 1024] [--steps 30] [--device auto] [--repeats 3] [--no-compile] [--dry-run]

What a GPU worker runs per job (``worker.pipeline.engine.Engine.run``: the same adapters, LoRA slots and call),
1024x1024, 30 steps, batch 1, guidance 7.5 (the API's default: classifier-free guidance doubles the UNet batch),
bf16 with PyTorch's SDPA attention. Weights:

- real ones when the ``sdxl`` profile is complete (``--model-dir``, ``ILLUSTRATIONS_MODEL_DIR``, ``var/models/sdxl``
  or the Hugging Face cache, as ``illustrations models check`` finds them): loaded with ``Engine.load``;
- otherwise the full-size architecture from the configs in ``bench/configs/sdxl/`` (the published configs of
  stable-diffusion-xl-base-1.0's UNet, VAE and two CLIP text encoders, h94/IP-Adapter's ViT-H image encoder, the
  plus-face identity adapter and the basic style adapter) with random weights created directly on the device. A
  random-weight model does exactly the same arithmetic as the real one, so it times the same; its images are noise.
  The tokenizers are SDXL's CLIP byte-level BPE vocabulary (49,408 tokens), written offline as the tiny model
  writes it (``worker.pipeline.tiny``); the tiny configs' text encoders have that vocabulary size too.

Rows (each: one warm-up call not counted, then ``--repeats`` timed calls, median): build/load time; ``plain`` (no
reference, no LoRA: both adapters stay loaded at scale 0, which diffusers skips, as for a text-only job);
``+ identity adapter`` (one face reference through the plus-face adapter, its embedding cached as the worker caches
it); ``+ identity x2, masks`` (two people, each tied to their half of the picture by an attention mask, as
``Engine.identity_inputs`` builds them); ``+ style adapter`` (a style reference with InstantStyle's per-block
scales); ``+ LoRA`` (a random rank-16 LoRA on the attention projections, saved with its adapter metadata and loaded
through ``LoraSlots``; its load is in the note); ``LoRA switch (resident)`` (a job naming another LoRA already in a
slot: ``set_adapters``) and ``LoRA hot-swap (new file)`` (a new LoRA file of the same rank replacing the least
recently used slot when every slot is full), both the slot step alone (``LoraUse.seconds``, median); ``draft`` and
``draft + identity + style`` (``quality: draft``: a random LoRA in SDXL-Lightning's 4-step layout, rank 64 and alpha
8 over every linear and convolution of the UNet's blocks, loaded resident as the engine loads it, trailing Euler, 4
steps, no classifier-free guidance; the second with both adapters' references).

The compile rows run on a second engine, loaded as a worker with ``ILLUSTRATIONS_TORCH_COMPILE`` loads one (the first
engine is freed before): ``EngineOptions(torch_compile=True)`` with the run's size as its one bucket, the worker's
default LoRA target rank and ``--compile-backend`` (``--compile-mode`` goes to the same in-place ``unet.compile``), so
the pipeline keeps one batch layout (``FixedBatchPipeline``, ``Fixed``: guidance's two halves, four identity slots
and the style adapter under masks) and its LoRA is hot-swapped into one prepared slot (``lora.HotswapSlot``).
``torch.compile (first call)`` (compile time, not counted below; the graphs it made and the load time in the note),
``+ torch.compile`` (a plain request), ``+ torch.compile + LoRA`` (the rank-16 LoRA in the slot), ``LoRA hot-swap
(compiled)`` (new files of the same rank swapped into the compiled slot: ``LoraUse.seconds``, median, and the graphs
those jobs compiled), ``recompiles`` (``GenerationResult.compiles`` summed over every job after the first call: the
timed calls, the swaps and a varied sequence: identity x1, x2 with masks, style, LoRA new, switched, scale changed,
none, guidance 1, two images). Drafts are not in them: a compiled engine refuses a draft (``VariantUnavailable``).
The style job keeps the API's default content scale 0: a content scale above 0 compiles a graph per content/style
ratio (documented in the engine). On a GPU the goal is 0 recompiles and a hot-swap of at most 100 ms.

``images/hour`` (one worker, from the fastest plain row); ``peak memory`` (the largest of the rows). Peak memory is
``torch.cuda.max_memory_allocated`` per row (on CPU, the process's peak RSS). A time budget (default 450 s) skips
what would not fit (the compile rows need 120 s of it on a GPU), so the script ends within 8 minutes; the markdown
table is printed last.

``--dry-run`` builds the tiny architecture (``bench/configs/tiny/``) on the CPU at 64x64, 2 steps, one repeat: it
runs every row through the same code, so the script is known to work before it first meets a GPU.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIGS = Path(__file__).resolve().parent / "configs"
PROMPT = "an old stone harbour at dawn, fishing boats, watercolour, soft light"
GUIDANCE = 7.5  # shared.limits.DEFAULT_GUIDANCE
LORA_RANK = 16
DRAFT_RANK, DRAFT_ALPHA = 64, 8  # SDXL-Lightning's 4-step LoRA as published
GiB = 1024**3


@dataclass
class Row:
    name: str
    seconds: float | None  # s/image for timed rows, s for build/compile
    unit: str = "s/image"
    peak_gib: float | None = None
    note: str = ""
    samples: list[float] = field(default_factory=list)


@dataclass
class Context:
    args: argparse.Namespace
    device: str
    dtype: Any
    started: float
    rows: list[Row] = field(default_factory=list)

    def left_s(self) -> float:
        return float(self.args.budget_s - (time.perf_counter() - self.started))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (1024; dry run 64)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (30; dry run 2)")
    parser.add_argument("--device", default=None, help="auto, cuda, cuda:N or cpu (auto; dry run cpu)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per row (3; dry run 1)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--compile-mode", default="default",
                        choices=("default", "max-autotune-no-cudagraphs", "reduce-overhead", "max-autotune"))
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (inductor; `eager` traces with dynamo only: what the dry run uses)")
    parser.add_argument("--dry-run", action="store_true", help="tiny architecture on the CPU, 64x64, 2 steps")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="real sdxl weights (default: ILLUSTRATIONS_MODEL_DIR, var/models/sdxl, the HF cache)")
    parser.add_argument("--random", action="store_true", help="random weights even when real ones are present")
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip rows that would not fit in this time")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                        help="auto: bfloat16 on CUDA, float32 on CPU (the engine's choice)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; dry run 1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    dry = args.dry_run
    args.size = args.size or (64 if dry else 1024)
    args.steps = args.steps or (2 if dry else 30)
    args.device = args.device or ("cpu" if dry else "auto")
    args.repeats = args.repeats or (1 if dry else 3)
    args.threads = args.threads or (1 if dry else 0)
    if args.size % 8 or not 64 <= args.size <= 2048:
        parser.error(f"--size must be a multiple of 8 between 64 and 2048, got {args.size}")
    if not 1 <= args.steps <= 150:
        parser.error(f"--steps must be between 1 and 150, got {args.steps}")
    if not 1 <= args.repeats <= 20:
        parser.error(f"--repeats must be between 1 and 20, got {args.repeats}")
    return args


# --- Building the pipeline ----------------------------------------------------------------------------------------


def _config(folder: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
    return data


def _real_profile(args: argparse.Namespace) -> Any:
    """The complete ``sdxl`` profile if the weights are here (as ``illustrations models check`` finds them)."""
    from worker.pipeline.profiles import locate_profile, missing_files

    if args.dry_run or args.random:
        return None
    explicit = args.model_dir is not None or bool(os.environ.get("ILLUSTRATIONS_MODEL_DIR"))
    model_dir = args.model_dir or Path(os.environ.get("ILLUSTRATIONS_MODEL_DIR") or "var/models/sdxl")
    profile = locate_profile("sdxl", model_dir, explicit=explicit)
    return None if missing_files(profile) else profile


def _tokenizers(folder: Path, scratch: Path) -> tuple[Any, Any]:
    from transformers import CLIPTokenizer

    from worker.pipeline.tiny import EOS, _write_tokenizer

    made = []
    for name in ("tokenizer", "tokenizer_2"):
        config = _config(folder, name)
        _write_tokenizer(scratch / name, pad_with=config.get("pad_token", EOS))
        made.append(CLIPTokenizer.from_pretrained(scratch / name, model_max_length=config["model_max_length"]))
    return made[0], made[1]


def _linear(rows: int, cols: int) -> Any:
    import torch

    return torch.randn(rows, cols) / cols**0.5


def _norm(prefix: str, dim: int) -> dict[str, Any]:
    import torch

    return {f"{prefix}.weight": 1.0 + 0.1 * torch.randn(dim), f"{prefix}.bias": 0.1 * torch.randn(dim)}


def _image_proj(spec: dict[str, Any], embed_dim: int, projection_dim: int, cross_dim: int) -> dict[str, Any]:
    """``image_proj`` tensors in the published IP-Adapter key format (diffusers converts them on load)."""
    import torch

    if spec["kind"] == "basic":  # ip-adapter_sdxl_vit-h: the pooled embedding to num_tokens tokens
        tokens = spec["num_tokens"]
        return {"proj.weight": _linear(tokens * cross_dim, projection_dim),
                "proj.bias": 0.1 * torch.randn(tokens * cross_dim),
                **_norm("norm", cross_dim)}
    dim, inner, ff = spec["dim"], spec["dim_head"] * spec["heads"], spec["ff_mult"] * spec["dim"]
    tensors = {  # plus-face: a Resampler over the penultimate hidden states
        "latents": torch.randn(1, spec["num_queries"], dim) / dim**0.5,
        "proj_in.weight": _linear(dim, embed_dim),
        "proj_in.bias": 0.1 * torch.randn(dim),
        "proj_out.weight": _linear(cross_dim, dim),
        "proj_out.bias": 0.1 * torch.randn(cross_dim),
        **_norm("norm_out", cross_dim),
    }
    for i in range(spec["depth"]):
        tensors |= _norm(f"layers.{i}.0.norm1", dim) | _norm(f"layers.{i}.0.norm2", dim) | _norm(f"layers.{i}.1.0", dim)
        tensors[f"layers.{i}.0.to_q.weight"] = _linear(inner, dim)
        tensors[f"layers.{i}.0.to_kv.weight"] = _linear(2 * inner, dim)
        tensors[f"layers.{i}.0.to_out.weight"] = _linear(dim, inner)
        tensors[f"layers.{i}.1.1.weight"] = _linear(ff, dim)
        tensors[f"layers.{i}.1.3.weight"] = _linear(dim, ff)
    return tensors


def _adapter_state(spec: dict[str, Any], unet: Any, encoder: Any, device: str, dtype: Any) -> dict[str, Any]:
    """One adapter as ``load_ip_adapter`` takes a state dict: ``{"image_proj": ..., "ip_adapter": ...}``."""
    import torch

    from worker.pipeline.tiny import _attention_tensors

    with torch.device(device):
        image_proj = _image_proj(spec, encoder.config.hidden_size, encoder.config.projection_dim,
                                 int(unet.config.cross_attention_dim))
        attention = {k.removeprefix("ip_adapter."): v for k, v in _attention_tensors(unet).items()}
    return {"image_proj": {k: v.to(dtype) for k, v in image_proj.items()},
            "ip_adapter": {k: v.to(dtype) for k, v in attention.items()}}


def build_random(folder: Path, device: str, dtype: Any, options: Any = None) -> tuple[Any, Any]:
    """The architecture in ``folder`` with random weights made on ``device``, both adapters loaded.

    Returns the engine and its parameter count. Modules are created under ``torch.device``, so their weights are
    initialised on the GPU (seconds for 3.4 B parameters) and never pass through host memory. ``options``
    (``EngineOptions``) as ``Engine.load`` takes them: with ``torch_compile`` the pipeline is ``FixedBatchPipeline``
    and the engine holds the hot-swap slot; the UNet is not compiled here (``compiled_engine`` does it).
    """
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    from worker.pipeline.engine import (
        Engine,
        EngineOptions,
        FixedBatchPipeline,
        style_scale_dict,
        validate_scale_dict,
    )
    from worker.pipeline.profiles import IDENTITY_WEIGHT, STYLE_WEIGHT, resolve_profile

    options = options or EngineOptions()

    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        tokenizer, tokenizer_2 = _tokenizers(folder, Path(scratch))
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(_config(folder, "unet"))
        vae = AutoencoderKL.from_config(_config(folder, "vae"))
        text_encoder = CLIPTextModel(CLIPTextConfig(**_config(folder, "text_encoder")))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_config(folder, "text_encoder_2")))
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**_config(folder, "image_encoder")))
    modules: tuple[Any, ...] = (unet, vae, text_encoder, text_encoder_2, image_encoder)
    for module in modules:
        module.to(dtype=dtype).eval().requires_grad_(False)
    scheduler_config = {k: v for k, v in _config(folder, "scheduler").items() if not k.startswith("_")}
    size = image_encoder.config.image_size
    pipeline_class: Any = FixedBatchPipeline if options.torch_compile else StableDiffusionXLPipeline  # Engine.load
    pipe: Any = pipeline_class(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=EulerDiscreteScheduler.from_config(scheduler_config),
        image_encoder=image_encoder, feature_extractor=CLIPImageProcessor(size=size, crop_size=size),
    )
    states = [_adapter_state(_config(folder, name), unet, image_encoder, device, dtype)
              for name in ("ip_adapter_identity", "ip_adapter_style")]
    # Order IDENTITY, STYLE, as Engine.load loads the two files.
    pipe.load_ip_adapter(states, subfolder="", weight_name=[IDENTITY_WEIGHT, STYLE_WEIGHT], image_encoder_folder=None)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    validate_scale_dict(pipe.unet, style_scale_dict(1.0, 1.0))
    params = sum(p.numel() for m in modules for p in m.parameters())
    profile = resolve_profile("sdxl", Path(folder))
    engine = Engine(pipe, profile, device, dtype, f"random-{folder.name}", 0.0, options)
    return engine, params


def random_lora(unet_config: dict[str, Any], rank: int, seed: int = 0) -> bytes:
    """A LoRA file for this UNet: rank ``rank`` on every attention projection, random A and B, saved as training
    saves one (``save_lora_weights`` with the adapter metadata). The shapes come from a UNet on ``meta``."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.training_utils import _collate_lora_metadata
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from worker.pipeline.tiny import LORA_TARGETS

    with torch.device("meta"):
        shell: Any = UNet2DConditionModel.from_config(unet_config)
    shell.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(LORA_TARGETS)))
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, meta in get_peft_model_state_dict(shell).items():
        scale = 1 / meta.shape[1] ** 0.5 if "lora_A" in name else 0.5 / rank**0.5
        tensors[name] = scale * torch.randn(tuple(meta.shape), generator=generator)
    metadata = _collate_lora_metadata({"unet": shell})
    for config in metadata.values():
        config["target_modules"] = sorted(config["target_modules"])
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as folder:
        StableDiffusionXLPipeline.save_lora_weights(folder, unet_lora_layers=tensors, weight_name="lora.safetensors",
                                                    **metadata)
        return (Path(folder) / "lora.safetensors").read_bytes()


# --- Timing -------------------------------------------------------------------------------------------------------


def _sync(ctx: Context) -> None:
    import torch

    if ctx.device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(ctx: Context) -> None:
    import torch

    if ctx.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _free(ctx: Context) -> None:
    """Give an engine's memory back (after its last reference is dropped)."""
    import gc

    import torch

    gc.collect()
    if ctx.device.startswith("cuda"):
        torch.cuda.empty_cache()


def _peak_gib(ctx: Context) -> float:
    import torch

    if ctx.device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / GiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB  # Linux reports KiB


def _timed(ctx: Context, call: Callable[[], Any]) -> float:
    _sync(ctx)
    started = time.perf_counter()
    call()
    _sync(ctx)
    return time.perf_counter() - started


def measure(ctx: Context, name: str, call: Callable[[], Any], note: str = "", warmups: int = 1) -> Row | None:
    """``warmups`` untimed calls, then ``--repeats`` timed ones (median); None when the budget is spent."""
    if ctx.rows and ctx.left_s() <= 0:
        ctx.rows.append(Row(name, None, note=f"skipped: the {ctx.args.budget_s:.0f} s budget is spent"))
        return None
    _reset_peak(ctx)
    for _ in range(warmups):
        call()
    samples = [_timed(ctx, call) for _ in range(ctx.args.repeats)]
    row = Row(name, statistics.median(samples), peak_gib=_peak_gib(ctx), note=note, samples=samples)
    ctx.rows.append(row)
    print(f"{name}: {row.seconds:.3f} s/image ({', '.join(f'{s:.3f}' for s in samples)})", flush=True)
    return row


def run(ctx: Context) -> None:
    import numpy as np
    import PIL.Image
    import torch

    from shared.regions import columns
    from worker.pipeline.engine import IDENTITY, STYLE, Engine, EngineOptions, GenerationRequest
    from worker.pipeline.lora import LoraRequest

    args = ctx.args
    if args.threads:
        torch.set_num_threads(args.threads)

    # 1. Build (random weights on the device) or load (real weights) the engine
    _reset_peak(ctx)
    started = time.perf_counter()
    profile = _real_profile(args)
    if profile is not None:
        engine = Engine.load(profile, device=ctx.device, options=EngineOptions())
        how, params = f"real weights ({profile.revision or profile.root})", None
    else:
        engine, params = build_random(CONFIGS / ("tiny" if args.dry_run else "sdxl"), ctx.device, ctx.dtype)
        how = f"random weights made on {ctx.device}"
    _sync(ctx)
    build_s = time.perf_counter() - started
    count = f", {params / 1e9:.2f} B parameters" if params and params > 1e8 else (f", {params} parameters"
                                                                                    if params else "")
    ctx.rows.append(Row("load / build", build_s, unit="s", peak_gib=_peak_gib(ctx), note=f"{how}{count}"))
    print(f"built in {build_s:.1f} s: {how}{count}", flush=True)

    # 2. The requests: references as the worker passes them (embeddings, cached by image hash)
    rng = np.random.default_rng(0)
    face = PIL.Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    second_face = PIL.Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    style_image = PIL.Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    base = GenerationRequest(prompt=PROMPT, negative_prompt="blurry, low quality", width=args.size,
                             height=args.size, steps=args.steps, guidance_scale=GUIDANCE, seed=1, num_images=1)
    identity = replace(base, identity_embeds=(engine.embed(IDENTITY, face),), identity_scale=0.6)
    style = replace(base, style_embeds=engine.embed(STYLE, style_image), style_scale=0.8, content_scale=1.0)

    # 3. Rows
    measure(ctx, "plain", lambda: engine.run(base), "no reference, no LoRA (adapters loaded at scale 0)")
    measure(ctx, "+ identity adapter", lambda: engine.run(identity), "plus-face, one reference, scale 0.6")
    faces = (identity.identity_embeds[0], engine.embed(IDENTITY, second_face))
    two = replace(identity, identity_embeds=faces, identity_regions=tuple(columns(2)))
    measure(ctx, "+ identity x2, masks", lambda: engine.run(two), "two people, each masked to half the picture")
    measure(ctx, "+ style adapter", lambda: engine.run(style), "InstantStyle blocks, style 0.8, content 1.0")
    loras: list[LoraRequest] = []
    lora_note = f"rank {LORA_RANK} on to_q/to_k/to_v/to_out.0, scale 0.8"
    if ctx.left_s() > 0:
        data = random_lora(dict(engine.pipe.unet.config), LORA_RANK)
        loras.append(LoraRequest(key=hashlib.sha256(data).hexdigest(), scale=0.8, fetch=lambda: data))
        request = replace(base, lora=loras[0])
        first = engine.run(request).lora  # the slot load: the warm-up call
        load_s = first.seconds if first else float("nan")
        row = measure(ctx, "+ LoRA", lambda: engine.run(request), lora_note + f"; slot load {load_s:.2f} s",
                      warmups=0)
        if row is not None:
            row.note += f" ({len(data) / 2**20:.0f} MiB file)"
    else:
        ctx.rows.append(Row("+ LoRA", None, note=f"skipped: the {args.budget_s:.0f} s budget is spent"))
    lora_swaps(ctx, engine, base, loras)

    # 4. Draft quality: the few-step variant on the same warm engine
    draft_rows(ctx, engine, base, identity, style)

    # 5. torch.compile: a second engine loaded as a compiled worker loads one (this one freed first); the same
    #    prompt, references and LoRA files
    if not args.no_compile:
        del engine, identity, two, style
        _free(ctx)
        compiled(ctx, profile, base, (face, second_face), style_image, loras)
        _free(ctx)
    summary(ctx)


def lora_swaps(ctx: Context, engine: Any, base: Any, loras: list[Any]) -> None:
    """``LoRA switch (resident)`` and ``LoRA hot-swap (new file)``: the slot step of a job (``LoraUse.seconds``).

    Fills every slot (one more random LoRA per slot, one step per job: the slot step does not depend on the steps),
    then alternates between two resident LoRAs, then brings new files of the same rank, each replacing the least
    recently used slot in place. ``loras`` receives the requests made, so the compiled rows can use them.
    """
    from worker.pipeline.lora import LoraRequest

    if not loras or ctx.left_s() <= 0:
        for name in ("LoRA switch (resident)", "LoRA hot-swap (new file)"):
            ctx.rows.append(Row(name, None, unit="s", note="skipped: no LoRA row, or the budget is spent"))
        return
    one_step = replace(base, steps=1)
    slots = len(engine.loras.slots)

    def new_lora(seed: int) -> Any:
        data = random_lora(dict(engine.pipe.unet.config), LORA_RANK, seed=seed)
        return LoraRequest(key=hashlib.sha256(data).hexdigest(), scale=0.8, fetch=lambda: data)

    while len(loras) < slots:  # every slot full, so the next new file replaces one
        loras.append(new_lora(len(loras)))
        engine.run(replace(one_step, lora=loras[-1]))
    switches = []
    for i in range(2 * ctx.args.repeats):
        use = engine.run(replace(one_step, lora=loras[i % 2])).lora
        if use is not None and use.resident:
            switches.append(use.seconds)
    ctx.rows.append(Row("LoRA switch (resident)", statistics.median(switches) if switches else None, unit="s",
                        peak_gib=_peak_gib(ctx), samples=switches,
                        note=f"another LoRA already in one of {slots} slots: set_adapters only"))
    swaps, kinds = [], set()
    for i in range(ctx.args.repeats):
        if ctx.left_s() <= 0:
            break
        request = new_lora(100 + i)
        use = engine.run(replace(one_step, lora=request)).lora
        if use is not None:
            swaps.append(use.seconds)
            kinds.add("in place (hotswap)" if use.hotswapped else "fresh load (no hot-swap)")
        loras.append(request)
    ctx.rows.append(Row("LoRA hot-swap (new file)", statistics.median(swaps) if swaps else None, unit="s",
                        peak_gib=_peak_gib(ctx), samples=swaps,
                        note=f"a new rank-{LORA_RANK} file into the least recently used slot: "
                             f"{', '.join(sorted(kinds))}"))
    print(f"LoRA switch {switches}, hot-swap {swaps} ({kinds})", flush=True)


def compiled_engine(ctx: Context, profile: Any) -> Any:
    """An engine loaded as a worker with ``ILLUSTRATIONS_TORCH_COMPILE`` loads one: ``EngineOptions(torch_compile=
    True)`` with the run's size as its one bucket and the worker's default LoRA target rank, so the pipeline keeps
    the fixed batch layout (``FixedBatchPipeline``, ``Fixed``) and the hot-swap slot is prepared before the UNet is
    compiled in place (``dynamic=False``). ``Engine.load`` for real weights; the same options on the random build,
    then ``Engine.load``'s compile step. ``--compile-mode`` (no worker setting) is passed to that same call."""
    from shared.settings import Settings
    from worker.pipeline.engine import Engine, EngineOptions

    args = ctx.args
    options = EngineOptions(torch_compile=True, compile_sizes=((args.size, args.size),),
                            lora_target_rank=Settings.model_fields["lora_target_rank"].default,
                            compile_backend=args.compile_backend)
    mode = None if args.compile_mode == "default" else args.compile_mode
    if profile is not None:
        engine = Engine.load(profile, device=ctx.device, options=options)  # compiles without a mode
        if mode is not None:  # nothing is compiled before the first call: this only replaces the wrapper
            engine.pipe.unet.compile(backend=options.compile_backend, dynamic=False, mode=mode)
    else:
        engine, _ = build_random(CONFIGS / ("tiny" if args.dry_run else "sdxl"), ctx.device, ctx.dtype, options)
        engine.pipe.unet.compile(backend=options.compile_backend, dynamic=False, mode=mode)
    return engine


def compiled(ctx: Context, profile: Any, base: Any, faces: tuple[Any, Any], style_image: Any,
             loras: list[Any]) -> None:
    """The compile rows, on a compiled engine (``compiled_engine``): the first call (compile time), the compiled
    plain call, the compiled call with a LoRA in the hot-swap slot, a new LoRA file hot-swapped in (the slot step,
    ``LoraUse.seconds``), and the graphs compiled by every job after the first (``GenerationResult.compiles``): a
    varied sequence, plus the timed calls and swaps. Drafts are left out: a compiled engine refuses them
    (``VariantUnavailable``)."""
    from shared.regions import columns
    from worker.pipeline.engine import IDENTITY, STYLE
    from worker.pipeline.lora import LoraRequest

    args = ctx.args
    if ctx.left_s() < (120 if ctx.device.startswith("cuda") else 0):
        ctx.rows.append(Row("torch.compile (first call)", None, unit="s",
                            note="skipped: too little of the budget left"))
        return
    _reset_peak(ctx)
    started = time.perf_counter()
    engine = compiled_engine(ctx, profile)
    _sync(ctx)
    load_s = time.perf_counter() - started
    how = f"{args.compile_backend}, mode={args.compile_mode}"
    after: list[Any] = []  # every GenerationResult after the first call

    def job(request: Any) -> Any:
        result = engine.run(request)
        after.append(result)
        return result

    first: list[Any] = []
    compile_s = _timed(ctx, lambda: first.append(engine.run(base)))
    ctx.rows.append(Row("torch.compile (first call)", compile_s, unit="s", peak_gib=_peak_gib(ctx),
                        note=f"a compiled worker's engine (loaded in {load_s:.1f} s: EngineOptions(torch_compile, "
                             f"{args.size}x{args.size}, LoRA target rank {engine.options.lora_target_rank}), "
                             f"{how}): {first[0].compiles} graph(s); warm-up, not in the rows below"))
    print(f"compiled: first call {compile_s:.1f} s, {first[0].compiles} graph(s)", flush=True)
    measure(ctx, "+ torch.compile", lambda: job(base),
            f"plain request, compiled ({how}); the fixed layout: guidance's two halves, 4 identity slots and the "
            "style adapter under masks, the LoRA slot at 0", warmups=0)

    def new_lora(seed: int) -> Any:
        data = random_lora(dict(engine.pipe.unet.config), LORA_RANK, seed=seed)
        return LoraRequest(key=hashlib.sha256(data).hexdigest(), scale=0.8, fetch=lambda: data)

    lora = loras[0] if loras else new_lora(0)
    swapped_in = job(replace(base, lora=lora)).lora  # the warm-up: hot-swapped into the slot
    measure(ctx, "+ torch.compile + LoRA", lambda: job(replace(base, lora=lora)),
            f"rank {LORA_RANK} in the hot-swap slot, scale 0.8 (swapped in {swapped_in.seconds:.3f} s)", warmups=0)

    # New LoRA files hot-swapped into the slot: the slot step alone, one step per job (it does not depend on steps)
    swaps, kinds, swap_graphs = [], set(), 0
    for i in range(args.repeats):
        if ctx.left_s() <= 0:
            break
        result = job(replace(base, steps=1, lora=new_lora(300 + i)))
        swaps.append(result.lora.seconds)
        kinds.add("in place (hotswap)" if result.lora.hotswapped else "resident (no swap)")
        swap_graphs += result.compiles
    ctx.rows.append(Row("LoRA hot-swap (compiled)", statistics.median(swaps) if swaps else None, unit="s",
                        peak_gib=_peak_gib(ctx), samples=swaps,
                        note=f"a new rank-{LORA_RANK} file into the compiled slot: {', '.join(sorted(kinds))}; "
                             f"{swap_graphs} graph(s) compiled by these jobs"))
    print(f"compiled LoRA hot-swap {swaps} ({kinds}), {swap_graphs} graph(s)", flush=True)

    # Recompiles: every kind of final job the worker sees, one after the other (2 steps each)
    identity = replace(base, identity_embeds=(engine.embed(IDENTITY, faces[0]),), identity_scale=0.6)
    two = replace(identity, identity_embeds=(*identity.identity_embeds, engine.embed(IDENTITY, faces[1])),
                  identity_regions=tuple(columns(2)))
    style = replace(base, style_embeds=engine.embed(STYLE, style_image), style_scale=0.8)  # content 0: the default
    other = loras[1] if len(loras) > 1 else new_lora(1)
    varied = [identity, two, style,
              replace(base, lora=new_lora(200)),  # a new file
              replace(base, lora=other),  # switched to another one (one slot: a hot-swap)
              replace(base, lora=replace(other, scale=0.5)),  # its scale changed
              base,  # no LoRA
              replace(base, guidance_scale=1.0), replace(base, num_images=2)]
    before, started, failures = len(after), time.perf_counter(), []
    for request in varied:
        if ctx.left_s() <= 0:
            failures.append("budget spent")
            break
        try:
            job(replace(request, steps=min(request.steps, 2)))
        except Exception as exc:  # a job the compiled engine cannot run is a finding, not the end of the table
            failures.append(f"{type(exc).__name__}: {str(exc)[:80]}")
    varied_graphs = sum(result.compiles for result in after[before:])
    total = sum(result.compiles for result in after)
    counted = sum(result.recompiles for result in after)
    note = (f"graphs compiled by the {len(after)} jobs after the first: {varied_graphs} over {len(varied)} varied "
            f"jobs (2 steps each, {time.perf_counter() - started:.1f} s: identity x1, x2 with masks, style, LoRA "
            f"new, switched, scale 0.5, none, guidance 1, 2 images), {total - varied_graphs} in the rows above; "
            f"the engine's recompile count {counted}. A content_scale above 0 compiles a graph per content/style "
            "ratio (documented); torch runs the UNet uncompiled past its recompile limit (8)")
    if failures:
        note += f"; failed: {'; '.join(failures)}"
    ctx.rows.append(Row("recompiles", float(total), unit="graphs", note=note))
    print(f"recompiles: {total} after the first call ({varied_graphs} over {len(varied)} varied jobs)", flush=True)


def summary(ctx: Context) -> None:
    """images/hour of one worker from the fastest plain row, and the largest peak memory of all rows."""
    plain = [r.seconds for r in ctx.rows if r.name in ("plain", "+ torch.compile") and r.seconds]
    best = min(plain) if plain else None
    which = "compiled" if best is not None and any(r.name == "+ torch.compile" and r.seconds == best
                                                   for r in ctx.rows) else "plain"
    ctx.rows.append(Row("images/hour", 3600 / best if best else None, unit="images/h",
                        note=f"one worker, {ctx.args.size}x{ctx.args.size}, {ctx.args.steps} steps, {which}"))
    peaks = [r.peak_gib for r in ctx.rows if r.peak_gib is not None]
    peak = max(peaks) if peaks else None
    ctx.rows.append(Row("peak memory", peak, unit="GiB", peak_gib=peak,
                        note="the largest of the rows (CUDA: max_memory_allocated; CPU: peak RSS)"))


def draft_rows(ctx: Context, engine: Any, base: Any, identity: Any, style: Any) -> None:
    """``draft`` and ``draft + identity + style``: its LoRA loaded resident (random, in SDXL-Lightning's layout, unless
    the real profile has the file), 4 steps, no guidance, at the run's size."""
    from worker.pipeline.engine import DRAFT_ADAPTER, load_draft_lora
    from worker.pipeline.profiles import DRAFT
    from worker.pipeline.tiny import write_draft_lora

    if ctx.left_s() <= 0:
        ctx.rows.append(Row("draft", None, note=f"skipped: the {ctx.args.budget_s:.0f} s budget is spent"))
        return
    started = time.perf_counter()
    how = "the profile's file"
    loaded = {name for names in engine.pipe.get_list_adapters().values() for name in names}
    if DRAFT_ADAPTER not in loaded:  # random weights, or a real profile without the file
        folder = Path(tempfile.mkdtemp(prefix="bench-draft-"))
        write_draft_lora(folder / DRAFT.weight, engine.pipe.unet, seed=0, rank=DRAFT_RANK, alpha=DRAFT_ALPHA)
        engine.profile = replace(engine.profile, draft_dir=folder)
        engine.draft_error = load_draft_lora(engine.pipe, engine.profile)
        how = f"random, rank {DRAFT_RANK}, alpha {DRAFT_ALPHA}"
    load_s = time.perf_counter() - started
    drafted = {"steps": DRAFT.steps, "guidance_scale": DRAFT.guidance_scale, "quality": "draft"}
    note = f"{DRAFT.steps} steps, no CFG, draft LoRA ({how}; loaded in {load_s:.1f} s)"
    measure(ctx, "draft", lambda: engine.run(replace(base, **drafted)), note)
    both = replace(identity, style_embeds=style.style_embeds, style_scale=style.style_scale,
                   content_scale=style.content_scale, **drafted)
    measure(ctx, "draft + identity + style", lambda: engine.run(both), "as draft, one face and a style reference")


# --- Report -------------------------------------------------------------------------------------------------------


def environment(ctx: Context) -> str:
    import diffusers
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(torch.device(ctx.device)) if ctx.device.startswith("cuda") else "no GPU"
    return (f"torch {torch.__version__} (CUDA {torch.version.cuda}), diffusers {diffusers.__version__}, transformers "
            f"{transformers.__version__}, Python {platform.python_version()}, {gpu}, {os.cpu_count()} CPUs; "
            f"{ctx.args.size}x{ctx.args.size}, {ctx.args.steps} steps, batch 1, guidance {GUIDANCE}, "
            f"{str(ctx.dtype).removeprefix('torch.')}, SDPA, {ctx.args.repeats} timed calls per row (median)")


def table(ctx: Context) -> str:
    plain = next((r.seconds for r in ctx.rows if r.name == "plain"), None)
    lines = ["| row | seconds | vs plain | peak GiB | note |", "|---|---|---|---|---|"]
    for row in ctx.rows:
        if row.seconds is None:
            value = "—"
        elif row.unit in ("images/h", "graphs"):
            value = f"{row.seconds:.0f} {row.unit}"
        else:
            value = f"{row.seconds:.3f} {row.unit}"
        ratio = (f"{row.seconds / plain:.2f}x" if row.unit == "s/image" and row.seconds is not None and plain
                 else "")
        peak = "" if row.peak_gib is None else f"{row.peak_gib:.2f}"
        lines.append(f"| {row.name} | {value} | {ratio} | {peak} | {row.note} |")
    total = time.perf_counter() - ctx.started
    lines.append(f"| total wall | {total:.1f} s | | | end to end, imports included |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before huggingface_hub is imported: never a download

    import torch

    from worker.pipeline.engine import _resolve_device

    try:
        device, dtype = _resolve_device(args.device)
        dtype = dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    except ValueError as exc:
        print(f"bench/gpu: {exc}", file=sys.stderr)
        return 2
    if device == "cpu" and not args.dry_run:
        print("bench/gpu: no CUDA device; timing full-size SDXL on a CPU takes hours. Use --dry-run, or "
              "--device cpu --size 128 --steps 1 for a smoke.", file=sys.stderr)
        if args.device == "auto":
            return 2
    ctx = Context(args, device, dtype, started)
    failure: BaseException | None = None
    try:
        run(ctx)
    except Exception as exc:  # a failed row still leaves the rows before it in the table
        failure = exc
        traceback.print_exc()
        ctx.rows.append(Row("error", None, note=f"{type(exc).__name__}: {str(exc)[:200]}"))
    except KeyboardInterrupt as exc:  # bench/gpu.sh's hard stop (SIGINT at 470 s): still print what was measured
        failure = exc
        ctx.rows.append(Row("interrupted", None, note="stopped at the time limit; rows after this were not run"))
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in ctx.rows], indent=2), encoding="utf-8")
    print()
    print(environment(ctx))
    print()
    print(table(ctx))
    if failure is not None:
        return 1
    bad = [r.name for r in ctx.rows if r.seconds is not None and not math.isfinite(r.seconds)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
