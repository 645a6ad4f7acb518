"""The LoRA trainer: SDXL's UNet attention projections learn a style from a few captioned pictures.

What one training is, on the ``tiny`` or the ``sdxl`` profile alike (same folder layout, same code):

- LoRA layers (PEFT) on the UNet's attention projections ``to_q``, ``to_k``, ``to_v`` and ``to_out.0``, found by
  name in every ``Attention`` module (the SDXL UNet has no ``torch.nn.MultiheadAttention``: a sketch looking for one
  adapts nothing). Everything else is frozen.
- SDXL's conditioning: both text encoders' penultimate hidden states concatenated, the second encoder's pooled
  projection as ``text_embeds``, and ``time_ids`` (original size, crop corner, target size) as SDXL was trained.
- Epsilon (or v) prediction with the base model's own noise schedule, MSE loss, AdamW, gradient clipping;
  ``accelerate`` runs the forward pass in bf16 on a GPU (the LoRA weights stay float32) and in float32 on a CPU;
  gradient checkpointing is a switch (less GPU memory, slower steps).
- The VAE and text encoders are needed once: every picture's latents and every caption's embeddings are computed
  at load, then those models are dropped, so the GPU holds only the UNet while training.
- Every random draw of step ``n`` (which pictures, timesteps, noise) comes from a generator seeded with
  ``(seed, n)``: a training resumed from a checkpoint at step ``k`` takes exactly the steps an uninterrupted one
  takes after ``k`` (the checkpoint restores the LoRA weights and the AdamW state).

``LoraTrainer.load`` builds one; ``run`` trains until the last step or until ``on_step`` says stop; ``checkpoint``
and ``restore`` save and resume; ``save_lora`` writes the file generation loads (with its adapter metadata).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from shared.errors import IllustrationsError
from worker.training.checkpoints import Checkpoint, InvalidCheckpoint

logger = logging.getLogger(__name__)

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
WEIGHT_NAME = "lora.safetensors"
MAX_GRAD_NORM = 1.0
ADAM_BETAS = (0.9, 0.999)
ADAM_WEIGHT_DECAY = 1e-2
ADAM_EPSILON = 1e-8
_SEED_STRIDE = 1_000_003  # step n of seed s draws from seed * stride + n (distinct for every realistic step count)

StepCallback = Callable[[int, float], bool]


class TrainingDiverged(IllustrationsError):
    """The loss stopped being a finite number (usually a learning rate too high for the data)."""

    def __init__(self, step: int) -> None:
        super().__init__(f"the loss was not a finite number at step {step}; try a lower learning_rate")
        self.step = step


@dataclass(frozen=True)
class TrainingParams:
    """What the client chose (``params`` of ``POST /v1/styles``, with defaults filled in)."""

    rank: int
    alpha: int
    steps: int
    learning_rate: float
    resolution: int
    seed: int
    batch_size: int = 1

    def check(self) -> None:
        """Raise ValueError naming the first bad parameter (the API checks its own limits first)."""
        if self.rank < 1:
            raise ValueError(f"`rank` must be at least 1, got {self.rank}")
        if self.alpha < 1:
            raise ValueError(f"`alpha` must be at least 1, got {self.alpha}")
        if self.steps < 1:
            raise ValueError(f"`steps` must be at least 1, got {self.steps}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"`learning_rate` must be a positive number, got {self.learning_rate}")
        if self.resolution < 64 or self.resolution % 8:
            raise ValueError(f"`resolution` must be a multiple of 8 of at least 64, got {self.resolution}")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class TrainerOptions:
    """How to run (deployment settings, not the client's choice)."""

    device: str = "auto"  # auto: CUDA when visible, else CPU
    mixed_precision: str = "auto"  # auto: bf16 on CUDA, none on CPU; or "no", "bf16", "fp16"
    gradient_checkpointing: bool = False
    num_threads: int = 0  # torch intra-op threads on CPU (0: torch's default)


@dataclass(frozen=True)
class Example:
    image: PIL.Image.Image  # RGB
    caption: str


def _device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"`device` is {requested!r} but torch sees no CUDA device")
    if requested != "cpu" and not requested.startswith("cuda"):
        raise ValueError(f"`device` must be auto, cpu or cuda, got {requested!r}")
    return requested


def _mixed_precision(requested: str, device: str) -> str:
    if requested == "auto":
        return "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "no"
    if requested not in ("no", "bf16", "fp16"):
        raise ValueError(f"`mixed_precision` must be auto, no, bf16 or fp16, got {requested!r}")
    if requested != "no" and not device.startswith("cuda"):
        raise ValueError(f"`mixed_precision` {requested} needs a CUDA device; this one is {device}")
    return requested


def _generator(seed: int, draw: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * _SEED_STRIDE + draw) % (2**63))


def _pixels(image: PIL.Image.Image, resolution: int) -> tuple[torch.Tensor, tuple[int, int, int, int, int, int]]:
    """Shorter side to ``resolution``, centre crop to a square; pixels in [-1, 1] and SDXL's six time ids."""
    width, height = image.size
    scale = resolution / min(width, height)
    resized = image.resize((max(resolution, round(width * scale)), max(resolution, round(height * scale))),
                           PIL.Image.Resampling.BICUBIC)
    top = (resized.height - resolution) // 2
    left = (resized.width - resolution) // 2
    cropped = resized.crop((left, top, left + resolution, top + resolution))
    array = np.asarray(cropped, dtype=np.float32) / 127.5 - 1.0
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1)
    return tensor, (height, width, top, left, resolution, resolution)


class LoraTrainer:
    """One training in memory: the UNet with LoRA layers, the optimizer, the encoded examples, the step reached."""

    def __init__(self, unet: Any, accelerator: Any, optimizer: Any, scheduler: Any, encoded: dict[str, torch.Tensor],
                 params: TrainingParams, fingerprint: str, device: str, weight_dtype: torch.dtype) -> None:
        self.unet = unet
        self.accelerator = accelerator
        self.optimizer = optimizer
        self.noise_scheduler = scheduler
        self.encoded = encoded  # latents, prompt_embeds, pooled, time_ids: one row per example, on the device
        self.params = params
        self.fingerprint = fingerprint
        self.device = device
        self.weight_dtype = weight_dtype
        self.step = 0  # optimizer steps taken
        self.trainable = [(name, p) for name, p in unet.named_parameters() if p.requires_grad]

    # --- Setup ------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, base_dir: Path, examples: Sequence[Example], params: TrainingParams, fingerprint: str,
             options: TrainerOptions | None = None) -> LoraTrainer:
        """Load the base model from ``base_dir`` (a diffusers SDXL folder), encode ``examples``, add the LoRA."""
        from accelerate import Accelerator
        from diffusers import DDPMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
        from peft import LoraConfig

        options = options or TrainerOptions()
        # 1. Check inputs
        params.check()
        if not examples:
            raise ValueError("`examples` must hold at least one picture")
        for index, example in enumerate(examples):
            if example.image.mode != "RGB":
                raise ValueError(f"`examples[{index}].image` must be RGB, got {example.image.mode}")
        if not (base_dir / "model_index.json").is_file():
            raise FileNotFoundError(f"no diffusers model at {base_dir} (model_index.json is missing)")
        device = _device(options.device)
        mixed_precision = _mixed_precision(options.mixed_precision, device)
        weight_dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]
        if options.num_threads > 0:
            torch.set_num_threads(options.num_threads)

        # 2. Encode every picture and caption once (VAE and text encoders in float32), then drop those models
        pipe = StableDiffusionXLPipeline.from_pretrained(base_dir, unet=None, local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        encoded = _encode(pipe, examples, params.resolution, device)
        del pipe
        if device.startswith("cuda"):
            torch.cuda.empty_cache()

        # 3. The UNet, frozen, with LoRA layers on the attention projections (float32 LoRA weights)
        unet = UNet2DConditionModel.from_pretrained(base_dir, subfolder="unet", dtype=weight_dtype,
                                                    local_files_only=True)
        unet.requires_grad_(False)
        torch.manual_seed(params.seed)  # PEFT draws lora_A from the global generator
        unet.add_adapter(LoraConfig(r=params.rank, lora_alpha=params.alpha, init_lora_weights="gaussian",
                                    target_modules=list(LORA_TARGETS)))
        for parameter in unet.parameters():
            if parameter.requires_grad:
                parameter.data = parameter.data.to(torch.float32)
        if options.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.to(device)
        unet.train()

        # 4. AdamW over the LoRA weights; accelerate runs the forward pass in the mixed precision chosen
        accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not device.startswith("cuda"))
        optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=params.learning_rate,
                                      betas=ADAM_BETAS, weight_decay=ADAM_WEIGHT_DECAY, eps=ADAM_EPSILON)
        unet, optimizer = accelerator.prepare(unet, optimizer)
        scheduler = DDPMScheduler.from_pretrained(base_dir, subfolder="scheduler", local_files_only=True)
        trainer = cls(unet, accelerator, optimizer, scheduler, encoded, params, fingerprint, device, weight_dtype)
        logger.info("LoRA training ready: %d pictures, rank %d, %d trainable tensors on %s (%s)", len(examples),
                    params.rank, len(trainer.trainable), device, mixed_precision)
        return trainer

    # --- Training -------------------------------------------------------------------------------------------------

    def _batch(self, step: int) -> torch.Tensor:
        """Example indices of ``step`` (1-based): each epoch is a permutation seeded by (seed, epoch)."""
        count = self.encoded["latents"].shape[0]
        size = self.params.batch_size
        indices = []
        for sample in range((step - 1) * size, step * size):
            epoch, position = divmod(sample, count)
            order = torch.randperm(count, generator=_generator(self.params.seed, -1 - epoch))
            indices.append(int(order[position]))
        return torch.tensor(indices, device=self.device)

    def train_step(self) -> float:
        """One optimizer step; returns its loss."""
        step = self.step + 1
        rows = self._batch(step)
        latents = self.encoded["latents"][rows]
        generator = _generator(self.params.seed, step)
        noise = torch.randn(latents.shape, generator=generator).to(self.device)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator).to(self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        with self.accelerator.autocast():
            prediction = self.unet(
                noisy.to(self.weight_dtype),
                timesteps,
                encoder_hidden_states=self.encoded["prompt_embeds"][rows].to(self.weight_dtype),
                added_cond_kwargs={"text_embeds": self.encoded["pooled"][rows].to(self.weight_dtype),
                                   "time_ids": self.encoded["time_ids"][rows].to(self.weight_dtype)},
                return_dict=False,
            )[0]
        loss = F.mse_loss(prediction.float(), target.float(), reduction="mean")
        value = float(loss.detach().item())
        if not math.isfinite(value):
            raise TrainingDiverged(step)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_([p for _, p in self.trainable], MAX_GRAD_NORM)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step = step
        return value

    def run(self, on_step: StepCallback | None = None) -> bool:
        """Train from the step reached to ``params.steps``; True when finished, False when ``on_step`` said stop."""
        while self.step < self.params.steps:
            loss = self.train_step()
            if on_step is not None and not on_step(self.step, loss):
                return self.step >= self.params.steps
        return True

    # --- Checkpoints and the result ---------------------------------------------------------------------------

    def checkpoint(self) -> Checkpoint:
        lora = {name: parameter.detach() for name, parameter in self.trainable}
        return Checkpoint(self.step, lora, self.optimizer.state_dict(), self.fingerprint)

    def restore(self, checkpoint: Checkpoint) -> None:
        """Continue from ``checkpoint`` (LoRA weights and AdamW state); ``InvalidCheckpoint`` if it does not fit."""
        if checkpoint.fingerprint != self.fingerprint:
            raise InvalidCheckpoint("the checkpoint belongs to another training (params or pictures differ)")
        if not 0 <= checkpoint.step <= self.params.steps:
            raise InvalidCheckpoint(f"the checkpoint is at step {checkpoint.step}, outside 0..{self.params.steps}")
        names = {name for name, _ in self.trainable}
        if set(checkpoint.lora) != names:
            raise InvalidCheckpoint("the checkpoint's LoRA layers differ from this training's")
        with torch.no_grad():
            for name, parameter in self.trainable:
                value = checkpoint.lora[name]
                if value.shape != parameter.shape:
                    raise InvalidCheckpoint(f"the checkpoint's {name} has shape {tuple(value.shape)}")
                parameter.copy_(value.to(parameter.device, parameter.dtype))
        try:
            self.optimizer.load_state_dict(checkpoint.optimizer)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise InvalidCheckpoint(f"the optimizer state does not fit ({type(exc).__name__})") from None
        self.step = checkpoint.step

    def save_lora(self, target: Path) -> Path:
        """Write the LoRA as generation loads it: diffusers' layout with the adapter metadata (rank and alpha)."""
        from diffusers import StableDiffusionXLPipeline
        from diffusers.training_utils import _collate_lora_metadata
        from peft.utils import get_peft_model_state_dict

        unet = self.accelerator.unwrap_model(self.unet)
        layers = {key: value.detach().to("cpu", torch.float32).contiguous()
                  for key, value in get_peft_model_state_dict(unet).items()}
        metadata = _collate_lora_metadata({"unet": unet})
        for config in metadata.values():
            config["target_modules"] = sorted(config["target_modules"])  # a set: its order changes by process
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".lora-", dir=target.parent))
        try:
            StableDiffusionXLPipeline.save_lora_weights(staging, unet_lora_layers=layers, weight_name=WEIGHT_NAME,
                                                        **metadata)
            (staging / WEIGHT_NAME).chmod(0o644)  # safetensors writes 0600; other processes read it
            os.replace(staging / WEIGHT_NAME, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


@torch.no_grad()
def _encode(pipe: Any, examples: Sequence[Example], resolution: int, device: str) -> dict[str, torch.Tensor]:
    """Latents (the VAE's mode, scaled) and SDXL text conditioning of every example, stacked, on ``device``."""
    vae = pipe.vae if pipe.vae.dtype == torch.float32 else pipe.vae.to(torch.float32)  # fp16 overflows (force_upcast)
    latents, time_ids, prompt_embeds, pooled = [], [], [], []
    for example in examples:
        pixels, ids = _pixels(example.image, resolution)
        latent = vae.encode(pixels.unsqueeze(0).to(device)).latent_dist.mode()
        latents.append(latent * vae.config.scaling_factor)
        time_ids.append(torch.tensor([ids], dtype=torch.float32))
        embeds, _, pooled_embeds, _ = pipe.encode_prompt(example.caption, device=device, num_images_per_prompt=1,
                                                         do_classifier_free_guidance=False)
        prompt_embeds.append(embeds.float())
        pooled.append(pooled_embeds.float())
    return {
        "latents": torch.cat(latents).to(device),
        "time_ids": torch.cat(time_ids).to(device),
        "prompt_embeds": torch.cat(prompt_embeds).to(device),
        "pooled": torch.cat(pooled).to(device),
    }


def fingerprint(params: TrainingParams, images: Sequence[tuple[str, str]]) -> str:
    """What a checkpoint must match to be resumed: the params and each picture's (sha256, caption sha256)."""
    digest = hashlib.sha256(repr(sorted(asdict(params).items())).encode())
    for image_sha, caption_sha in images:
        digest.update(f"{image_sha}:{caption_sha}\n".encode())
    return digest.hexdigest()
