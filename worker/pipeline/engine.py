"""The generation engine: SDXL with two IP-Adapters kept warm, one call per job.

Loaded once per worker process (setup once, run many). Identity and style are two adapters loaded together: the
face-focused "plus" adapter takes every subject's reference photos as one list, and the general adapter takes the
style reference with InstantStyle per-block scales. Both stay loaded for every job; a job without references gives
that adapter scale 0 and a neutral embedding, because diffusers refuses a call without an image once an adapter is
loaded, and unloading would throw away the warm image encoder.

References are encoded one image at a time (``embed``) and passed as ``ip_adapter_image_embeds``: a caller can hand
in embeddings it cached (``identity_embeds`` / ``style_embeds``), and a cached embedding gives exactly the image the
uncached one gives, because both went through the same one-image call. LoRA styles live in ``LoraSlots``.

People: each identity photo keeps its own tokens (the adapter's embeds are ``(batch, people, tokens, dim)``), and
with ``identity_regions`` each person's tokens are tied to their region by an attention mask (``masks``), so faces
never blend; ``identity_inputs`` builds both, and can pad to a fixed number of people with zero masks. Without
regions (one person, the whole picture) the call is exactly the one made before masks existed.

Quality: a ``draft`` job runs the profile's few-step variant (``profiles.DraftVariant``): its distillation LoRA,
loaded once at warm-up as the adapter ``draft`` and kept resident beside the style slots (a style LoRA and the draft
LoRA are active together, each at its own weight), its scheduler (built once from the base scheduler's config) and
its step count, without classifier-free guidance (guidance <= 1: one UNet batch per step, and the adapters' image
embeddings without a negative half). A ``final`` job deactivates the draft adapter and takes the base scheduler back:
switching costs a ``set_adapters`` and an attribute, never a load. A profile without the draft file loads and runs
final jobs; its draft jobs raise ``VariantUnavailable`` naming the file.

``run`` does one job and says where its time went; ``generate`` returns only the images.

Compiled (``EngineOptions.torch_compile``): the UNet is compiled once per size bucket and every job keeps the graph
(``Fixed``): the batch always holds guidance's two halves, four identity slots with masks, the style adapter with a
mask; the adapters' scales are constants and each job's scales live in the masks; the LoRA is hot-swapped into one
slot whose scale is a tensor (``lora.HotswapSlot``); a job's images run one per pipeline call. A job at a size
outside the buckets runs the UNet uncompiled. ``GenerationResult.compiles`` counts graphs compiled during a job.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import diffusers
import PIL.Image
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.models.embeddings import ImageProjection
from transformers import CLIPVisionModelWithProjection

from shared.regions import Region
from worker.pipeline.lora import LOAD_ERRORS, HotswapSlot, LoraRequest, LoraSlots, LoraUse
from worker.pipeline.masks import MaskGrid, identity_masks
from worker.pipeline.profiles import ModelProfile, ModelsMissing, draft_missing, missing_files, read_revision

logger = logging.getLogger(__name__)

IDENTITY, STYLE = 0, 1  # adapter order, as loaded
MAX_IDENTITY_IMAGES = 4
MAX_IMAGES = 8
MIN_SIDE, MAX_SIDE = 64, 2048
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_ADAPTER_SCALE = 2.0
MAX_SEED = 2**63 - 1

ScaleConfig = float | dict[str, Any]
StepCallback = Callable[[int, int], bool]
Quality = Literal["final", "draft"]
QUALITIES: tuple[Quality, ...] = ("final", "draft")
DRAFT_ADAPTER = "draft"  # the draft LoRA's adapter name (the style slots are ``slot0``...)


@dataclass(frozen=True)
class EngineOptions:
    """How to load: LoRA slots, and the optional speed-ups (all off by default; each is a setting)."""

    lora_slots: int = 4
    torch_compile: bool = False  # compile the UNet in place, one graph per size bucket (the module docstring)
    compile_sizes: tuple[tuple[int, int], ...] = ((1024, 1024),)  # (width, height) buckets
    lora_target_rank: int = 64  # the hot-swap slot's rank when compiled
    compile_backend: Any = "inductor"  # torch.compile's backend (tests count graphs with their own)
    vae_tiling: bool = False  # decode large images in tiles (less memory, seams are blended)
    vae_slicing: bool = False  # decode a batch one image at a time


@dataclass(frozen=True)
class GenerationRequest:
    """One job's parameters. References are RGB images, or their embeddings from ``Engine.embed`` (cached)."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    num_images: int
    identity_images: tuple[PIL.Image.Image, ...] = ()
    identity_scale: float = 0.6
    style_image: PIL.Image.Image | None = None
    style_scale: float = 0.8
    content_scale: float = 0.0  # InstantStyle "style only": the reference's layout block stays off
    identity_embeds: tuple[torch.Tensor, ...] = ()  # one per photo, each ``embed(IDENTITY, photo)``
    style_embeds: torch.Tensor | None = None  # ``embed(STYLE, image)``
    lora: LoraRequest | None = None
    # One region per identity photo (fractions, ``shared.regions``): each person's tokens reach only their region.
    # Empty: no masks (one person has the whole picture; several would share it, their tokens concatenated).
    identity_regions: tuple[Region, ...] = ()
    quality: Quality = "final"  # draft: the profile's few-step variant (its LoRA and scheduler; see the docstring)

    @property
    def identity_count(self) -> int:
        return len(self.identity_images) or len(self.identity_embeds)

    @property
    def has_style(self) -> bool:
        return self.style_image is not None or self.style_embeds is not None


@dataclass(frozen=True)
class GenerationResult:
    images: list[PIL.Image.Image]
    prepare_s: float  # LoRA slot and reference embeddings
    inference_s: float  # the pipeline call
    lora: LoraUse | None
    peak_memory_bytes: int | None  # CUDA only
    compiles: int = 0  # graphs torch.compile made during the job (compiled engines only)
    recompiles: int = 0  # of those, graphs for a size bucket that had one already


class Interrupted(Exception):
    """``on_step`` asked to stop: raised from the step callback, so the pipeline stops there, before decoding."""


class FixedBatchPipeline(StableDiffusionXLPipeline):
    """SDXL that always runs classifier-free guidance's doubled batch: one batch layout for a compiled UNet. At
    guidance 1 the guided result is the unguided one (``uncond + 1 * (text - uncond)``), within float noise."""

    @property
    def do_classifier_free_guidance(self) -> bool:
        return True


@dataclass(frozen=True)
class Fixed:
    """A compiled engine's inputs for one job: the same shapes and adapter scales for every job."""

    image_embeds: list[torch.Tensor]
    masks: list[torch.Tensor]  # identity (1, 4, h, w) and style (1, 1, h, w), each job's scale in their values
    scales: list[ScaleConfig]  # constants, except a content_scale above 0 (a graph per content/style ratio)
    guidance_scale: float  # at least 1


class VariantUnavailable(Exception):
    """The job's quality cannot run on this engine (the draft LoRA is missing or did not load); the message names
    the file and the fix. Other qualities run."""


def style_scale_dict(style_scale: float, content_scale: float) -> dict[str, Any]:
    """InstantStyle: style through ``up.block_0``'s middle layer, layout through ``down.block_2``'s second one."""
    return {"down": {"block_2": [0.0, content_scale]}, "up": {"block_0": [0.0, style_scale, 0.0]}}


def validate_scale_dict(unet: Any, scale: ScaleConfig) -> None:
    """Refuse a per-block scale that names a block the UNet lacks or gives a list of the wrong length.

    diffusers drops unknown blocks without a word, which leaves every layer at scale 0: the job would run and
    quietly ignore its reference.
    """
    if not isinstance(scale, dict):
        return
    blocks = {
        "down": {f"block_{i}" for i, block in enumerate(unet.down_blocks) if hasattr(block, "attentions")},
        "up": {f"block_{i}" for i, block in enumerate(unet.up_blocks) if hasattr(block, "attentions")},
    }
    layers = {"down": unet.config.layers_per_block, "up": unet.config.layers_per_block + 1}
    for part, value in scale.items():
        if part == "mid":
            if not isinstance(value, int | float):
                raise ValueError(f"scale for `mid` must be a number, got {value!r}")
            continue
        if part not in blocks:
            raise ValueError(f"scale names `{part}`; expected `down`, `mid` or `up`")
        if isinstance(value, int | float):
            continue
        if not isinstance(value, dict):
            raise ValueError(f"scale for `{part}` must be a number or a dict of blocks, got {value!r}")
        for block, layer_scales in value.items():
            if block not in blocks[part]:
                known = ", ".join(sorted(blocks[part])) or "none"
                raise ValueError(f"scale names `{part}.{block}`, which has no attention here (blocks: {known})")
            if isinstance(layer_scales, list) and not all(isinstance(v, int | float) for v in layer_scales):
                raise ValueError(f"scale for `{part}.{block}` must hold numbers, got {layer_scales!r}")
            if isinstance(layer_scales, list) and len(layer_scales) != layers[part]:
                raise ValueError(f"scale for `{part}.{block}` must list {layers[part]} values, got {len(layer_scales)}")


def _check_request(req: GenerationRequest) -> None:
    """Raise ValueError naming the first bad parameter."""
    if not isinstance(req.prompt, str) or not req.prompt.strip():
        raise ValueError("`prompt` must be a non-empty string")
    for name, side in (("width", req.width), ("height", req.height)):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise ValueError(f"`{name}` must be between {MIN_SIDE} and {MAX_SIDE}, got {side}")
        if side % 8:
            raise ValueError(f"`{name}` must be a multiple of 8, got {side}")
    if req.quality not in QUALITIES:
        raise ValueError(f"`quality` must be one of {', '.join(QUALITIES)}, got {req.quality!r}")
    if not 1 <= req.steps <= MAX_STEPS:
        raise ValueError(f"`steps` must be between 1 and {MAX_STEPS}, got {req.steps}")
    if not 1 <= req.num_images <= MAX_IMAGES:
        raise ValueError(f"`num_images` must be between 1 and {MAX_IMAGES}, got {req.num_images}")
    if not 0 <= req.seed <= MAX_SEED - req.num_images + 1:
        raise ValueError(f"`seed` must be between 0 and {MAX_SEED - req.num_images + 1}, got {req.seed}")
    if not (math.isfinite(req.guidance_scale) and 0 <= req.guidance_scale <= MAX_GUIDANCE):
        raise ValueError(f"`guidance_scale` must be between 0 and {MAX_GUIDANCE}, got {req.guidance_scale}")
    for name in ("identity_scale", "style_scale", "content_scale"):
        value = getattr(req, name)
        if not (math.isfinite(value) and 0 <= value <= MAX_ADAPTER_SCALE):
            raise ValueError(f"`{name}` must be between 0 and {MAX_ADAPTER_SCALE}, got {value}")
    if len(req.identity_images) > MAX_IDENTITY_IMAGES:
        raise ValueError(f"`identity_images` must hold at most {MAX_IDENTITY_IMAGES}, got {len(req.identity_images)}")
    if len(req.identity_embeds) > MAX_IDENTITY_IMAGES:
        raise ValueError(f"`identity_embeds` must hold at most {MAX_IDENTITY_IMAGES}, got {len(req.identity_embeds)}")
    if req.identity_images and req.identity_embeds:
        raise ValueError("give `identity_images` or `identity_embeds`, not both")
    if req.style_image is not None and req.style_embeds is not None:
        raise ValueError("give `style_image` or `style_embeds`, not both")
    if req.identity_regions and len(req.identity_regions) != req.identity_count:
        raise ValueError(f"`identity_regions` must give one region per identity image: {req.identity_count} images, "
                         f"{len(req.identity_regions)} regions")
    for i, region in enumerate(req.identity_regions):
        if len(region) != 4 or not all(math.isfinite(v) and 0 <= v <= 1 for v in region):
            raise ValueError(f"`identity_regions[{i}]` must be four fractions between 0 and 1")
        if region[0] >= region[2] or region[1] >= region[3]:
            raise ValueError(f"`identity_regions[{i}]` must have x0 < x1 and y0 < y1")
    if req.lora is not None and not (math.isfinite(req.lora.scale) and 0 <= req.lora.scale <= MAX_ADAPTER_SCALE):
        raise ValueError(f"`lora.scale` must be between 0 and {MAX_ADAPTER_SCALE}, got {req.lora.scale}")
    references = [(f"identity_images[{i}]", image) for i, image in enumerate(req.identity_images)]
    if req.style_image is not None:
        references.append(("style_image", req.style_image))
    for name, image in references:
        if not isinstance(image, PIL.Image.Image) or image.mode != "RGB":
            raise ValueError(f"`{name}` must be an RGB PIL image, got {getattr(image, 'mode', type(image).__name__)}")


def _resolve_device(device: str) -> tuple[str, torch.dtype]:
    """cuda + bfloat16 (SDPA attention is torch 2's default) where there is a GPU, else cpu + float32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"`device` is {device!r} but torch sees no CUDA device")
        return device, torch.bfloat16
    if device != "cpu":
        raise ValueError(f"`device` must be auto, cpu or cuda, got {device!r}")
    return device, torch.float32


def load_draft_lora(pipe: Any, profile: ModelProfile) -> str | None:
    """Load the profile's draft LoRA as the adapter ``draft``, inactive; return why not when it cannot be (the
    engine still loads: final jobs do not need it)."""
    missing = draft_missing(profile)
    if missing is not None:
        return (f"draft quality needs {missing} (model profile {profile.name!r} at {profile.root}); run "
                f"`illustrations models {'make-tiny' if profile.name == 'tiny' else 'download'}`")
    path = profile.draft_file
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=DRAFT_ADAPTER,
                                   use_safetensors=True, local_files_only=True)
    except LOAD_ERRORS as exc:
        logger.error("the draft LoRA %s could not be loaded (%s)", path.name, type(exc).__name__)
        return f"the draft LoRA {path.name} could not be loaded ({type(exc).__name__}); see the worker log"
    pipe.disable_lora()  # loading activated it; each job says which adapters it uses
    return None


def draft_scheduler(scheduler: Any, profile: ModelProfile) -> Any:
    """The draft variant's scheduler, built from the base scheduler's config as the model card says (no disk)."""
    variant = profile.draft
    return getattr(diffusers, variant.scheduler).from_config(scheduler.config, **dict(variant.scheduler_config))


class Engine:
    """A loaded pipeline; build it with ``Engine.load`` and call ``generate`` per job."""

    def __init__(
        self,
        pipe: Any,
        profile: ModelProfile,
        device: str,
        dtype: torch.dtype,
        revision: str,
        load_seconds: float,
        options: EngineOptions | None = None,
        draft_error: str | None = "the draft LoRA was not loaded (Engine.load loads it)",
    ) -> None:
        self.pipe = pipe  # diffusers registers components dynamically: typed as Any
        self.profile = profile
        self.device = device
        self.dtype = dtype
        self.revision = revision
        self.load_seconds = load_seconds
        self.options = options or EngineOptions()
        self.loras: LoraSlots | HotswapSlot = (
            HotswapSlot(pipe, self.options.lora_target_rank) if self.options.torch_compile
            else LoraSlots(pipe, self.options.lora_slots)
        )
        self._compiled_sizes: set[tuple[int, int]] = set()
        self._scales: list[ScaleConfig] | None = None  # what set_ip_adapter_scale was last given
        layers = pipe.unet.encoder_hid_proj.image_projection_layers
        # diffusers feeds hidden states to every projection but the basic one, which takes the pooled embedding.
        self._hidden_states = [not isinstance(layer, ImageProjection) for layer in layers]
        self._negatives = [self._negative(hidden) for hidden in self._hidden_states]
        self.mask_grid = MaskGrid.of(pipe.unet, pipe.vae_scale_factor)
        # Draft: None when its LoRA is resident, else why not (what a draft job fails with).
        self.draft_error = draft_error
        self.schedulers: dict[Quality, Any] = {"final": pipe.scheduler,
                                               "draft": draft_scheduler(pipe.scheduler, profile)}

    @classmethod
    def load(
        cls, profile: ModelProfile, device: str = "auto", num_threads: int = 0, options: EngineOptions | None = None
    ) -> Engine:
        """Load the base pipeline, the image encoder and both adapters once; raise ModelsMissing first."""
        options = options or EngineOptions()
        missing = missing_files(profile)
        if missing:
            raise ModelsMissing(profile, missing)
        if num_threads > 0:
            torch.set_num_threads(num_threads)
        device, dtype = _resolve_device(device)
        started = time.perf_counter()
        image_encoder = CLIPVisionModelWithProjection.from_pretrained(
            profile.image_encoder_dir, dtype=dtype, local_files_only=True
        )
        pipeline_class = FixedBatchPipeline if options.torch_compile else StableDiffusionXLPipeline
        pipe = pipeline_class.from_pretrained(
            profile.base_dir, image_encoder=image_encoder, dtype=dtype, local_files_only=True
        )
        pipe.load_ip_adapter(
            str(profile.ip_adapter_dir),
            subfolder=profile.adapter_subfolder,
            weight_name=[profile.identity_weight, profile.style_weight],  # order: IDENTITY, STYLE
            image_encoder_folder=None,
            local_files_only=True,
        )
        pipe.to(device)
        pipe.set_progress_bar_config(disable=True)  # progress goes through on_step, not tqdm on stderr
        validate_scale_dict(pipe.unet, style_scale_dict(1.0, 1.0))  # a UNet without SDXL's blocks fails at setup
        if options.torch_compile:
            # A compiled UNet holds one LoRA slot prepared for hot-swapping (its graph never changes); a second,
            # resident adapter would change the graph at every draft/final switch. Drafts run on uncompiled workers.
            draft_error: str | None = (
                "draft quality is not run by a compiled worker (ILLUSTRATIONS_TORCH_COMPILE is on); "
                "serve drafts from a worker without it"
            )
        else:
            draft_error = load_draft_lora(pipe, profile)  # a LoRA load adds layers: before anything else
        if options.vae_tiling:
            pipe.vae.enable_tiling()
        if options.vae_slicing:
            pipe.vae.enable_slicing()
        engine = cls(pipe, profile, device, dtype, read_revision(profile), 0.0, options, draft_error)  # LoRA slot first
        if options.torch_compile:
            # In place (nn.Module.compile), so LoRA and IP-Adapter loaders still see the UNet's own modules; one
            # static graph per size (dynamic=False), never a dynamic one that would serve all sizes more slowly.
            pipe.unet.compile(backend=options.compile_backend, dynamic=False)
        engine.load_seconds = time.perf_counter() - started
        logger.info(
            "loaded %s (%s) on %s/%s in %.1f s", profile.name, engine.revision, device, dtype, engine.load_seconds
        )
        return engine

    # --- Reference embeddings -----------------------------------------------------------------------------------

    def embed(self, adapter: int, image: PIL.Image.Image) -> torch.Tensor:
        """One image's embedding for ``adapter`` (IDENTITY or STYLE): (1, tokens, dim) or (1, dim).

        Images are encoded one at a time, cached or not, so a cached embedding reproduces the uncached image exactly.
        """
        if adapter not in (IDENTITY, STYLE):
            raise ValueError(f"`adapter` must be {IDENTITY} (identity) or {STYLE} (style), got {adapter}")
        return self._embed(image, self._hidden_states[adapter])

    def embed_identity(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """The identity adapter's embedding of one or more photos: (n, tokens, dim) or (n, dim)."""
        if not images:
            raise ValueError("at least one reference image is needed")
        return torch.cat([self.embed(IDENTITY, image) for image in images])

    def embed_style(self, image: PIL.Image.Image) -> torch.Tensor:
        """The style adapter's embedding of one reference: (1, dim) or (1, tokens, dim)."""
        return self.embed(STYLE, image)

    @property
    def device_name(self) -> str:
        """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what the metrics rows record."""
        if not self.device.startswith("cuda"):
            return self.device
        index = torch.device(self.device).index or 0
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"

    @property
    def encoder_revision(self) -> str:
        """What an embedding depends on besides the image: the weights' revision and the dtype."""
        return f"{self.revision}-{str(self.dtype).removeprefix('torch.')}"

    @torch.inference_mode()
    def _embed(self, image: PIL.Image.Image, hidden_states: bool) -> torch.Tensor:
        """What diffusers' ``encode_image`` computes for the conditional half, without its unconditional pass."""
        pixels = self.pipe.feature_extractor([image], return_tensors="pt").pixel_values
        pixels = pixels.to(device=self.device, dtype=self.pipe.image_encoder.dtype)
        if hidden_states:
            return self.pipe.image_encoder(pixels, output_hidden_states=True).hidden_states[-2]
        return self.pipe.image_encoder(pixels).image_embeds

    @torch.inference_mode()
    def _negative(self, hidden_states: bool) -> torch.Tensor:
        """The unconditional embedding of one reference, as diffusers makes it: a zero image, or zeros."""
        size = self.pipe.image_encoder.config.image_size
        zeros = torch.zeros(1, 3, size, size, device=self.device, dtype=self.pipe.image_encoder.dtype)
        if hidden_states:
            return self.pipe.image_encoder(zeros, output_hidden_states=True).hidden_states[-2]
        return torch.zeros_like(self.pipe.image_encoder(zeros).image_embeds)

    def _adapter_input(self, adapter: int, positive: torch.Tensor | None, guided: bool) -> torch.Tensor:
        """One adapter's ``ip_adapter_image_embeds`` entry: (1, n, ...), or (2, n, ...) = [negative, positive]
        under classifier-free guidance, which diffusers splits with ``chunk(2)``. No references: zeros."""
        negative = self._negatives[adapter]
        if positive is None:
            positive = negative = torch.zeros_like(negative)
        positive = positive.to(device=self.device, dtype=self.dtype).unsqueeze(0)
        if not guided:
            return positive
        return torch.cat([negative.expand_as(positive[0]).unsqueeze(0), positive])

    def identity_inputs(
        self,
        embeds: torch.Tensor,
        regions: Sequence[Region],
        width: int,
        height: int,
        guided: bool,
        slots: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The identity adapter's inputs for ``embeds`` (one per person, ``(n, tokens, dim)``): its
        ``ip_adapter_image_embeds`` entry ``((2 if guided else 1), slots, tokens, dim)``, each person's tokens in
        their own slot, and its ``ip_adapter_masks`` entry ``(1, slots, h, w)``, mask i tying slot i to
        ``regions[i]`` (None without regions: every slot has the whole picture).

        ``slots`` (default: one per person) pads with the negative embedding under an all-zero mask, which adds
        exactly nothing: a fixed number of identity slots (a compiled UNet) costs no change to the picture.
        """
        people = embeds.shape[0]
        slots = people if slots is None else slots
        if slots < people:
            raise ValueError(f"{people} people do not fit in {slots} identity slots")
        if regions and len(regions) != people:
            raise ValueError(f"one region per person: {people} people, {len(regions)} regions")
        if slots > people and not regions:
            raise ValueError("padding slots need regions (their masks keep the padding out of the picture)")
        if slots > people:
            padding = self._negatives[IDENTITY].to(embeds.device, embeds.dtype)
            embeds = torch.cat([embeds, padding.expand(slots - people, *embeds.shape[1:])])
        masks = None
        if regions:
            masks = identity_masks(self.mask_grid, regions, width, height, slots=slots, device=self.device)
        return self._adapter_input(IDENTITY, embeds, guided), masks

    def fixed_inputs(self, req: GenerationRequest, identity_embeds: torch.Tensor | None,
                     style_embeds: torch.Tensor | None) -> Fixed:
        """A compiled engine's inputs: four identity slots (a person without a region has the whole picture; a
        padding slot a zero mask), the identity scale in the identity masks; the style reference (zeros without
        one) under a mask holding the style scale, the layer scales constant."""
        slots = MAX_IDENTITY_IMAGES
        masks: torch.Tensor | None
        if identity_embeds is not None:
            regions = req.identity_regions or ((0.0, 0.0, 1.0, 1.0),) * identity_embeds.shape[0]
            identity, masks = self.identity_inputs(identity_embeds, regions, req.width, req.height, True, slots=slots)
        else:  # nobody: four padding slots under zero masks
            negative = self._negatives[IDENTITY]
            identity = self._adapter_input(IDENTITY, negative.expand(slots, *negative.shape[1:]), True)
            masks = identity_masks(self.mask_grid, (), req.width, req.height, slots=slots, device=self.device)
        assert masks is not None
        identity_scaled = masks * (req.identity_scale if identity_embeds is not None else 0.0)
        style_on, content = req.style_scale, 0.0
        if req.has_style and req.content_scale > 0:
            if req.style_scale > 0:
                content = req.content_scale / req.style_scale  # under the mask's style_scale: content_scale
            else:
                style_on, content = 1.0, req.content_scale  # rare: a new graph (the style layer at 0 is skipped)
        layers = style_scale_dict(1.0 if req.style_scale > 0 or not req.has_style else 0.0, content)
        style_mask = torch.full_like(identity_scaled[:, :1], style_on if req.has_style else 0.0)
        return Fixed(
            image_embeds=[identity, self._adapter_input(STYLE, style_embeds, True)],
            masks=[identity_scaled, style_mask],
            scales=[1.0, layers],
            guidance_scale=max(req.guidance_scale, 1.0),
        )

    # --- The call -----------------------------------------------------------------------------------------------

    def generate(self, req: GenerationRequest, on_step: StepCallback | None = None) -> list[PIL.Image.Image]:
        """Run one job and return its images (see ``run``)."""
        return self.run(req, on_step).images

    def run(self, req: GenerationRequest, on_step: StepCallback | None = None) -> GenerationResult:
        """Run one job; image i uses seed + i. Raise Interrupted when ``on_step`` returns False."""
        # 1. Check inputs
        _check_request(req)
        style: ScaleConfig = style_scale_dict(req.style_scale, req.content_scale) if req.has_style else 0.0
        validate_scale_dict(self.pipe.unet, style)
        started = time.perf_counter()

        # 2. The LoRA style: its slot active at the job's scale, or every LoRA layer bypassed. Outside inference
        #    mode: weights loaded under it would be inference tensors that a later in-place hot-swap cannot update.
        #    The quality's resident adapters (the draft LoRA) are active beside it; its scheduler is set.
        resident = self.use_quality(req.quality)
        lora_use = self.loras.activate(req.lora, also=resident) if req.lora is not None else None
        if req.lora is None:
            self.loras.only(resident)
        with torch.inference_mode():
            return self._denoise(req, style, started, lora_use, on_step)

    def use_quality(self, quality: Quality) -> Mapping[str, float]:
        """Set ``quality``'s scheduler and return the resident adapters it runs with (name -> weight); raise
        ``VariantUnavailable`` when it cannot run here."""
        if quality == "draft" and self.draft_error is not None:
            raise VariantUnavailable(self.draft_error)
        if self.pipe.scheduler is not self.schedulers[quality]:
            self.pipe.scheduler = self.schedulers[quality]  # a registered component: diffusers updates its config
        return {DRAFT_ADAPTER: 1.0} if quality == "draft" else {}

    def _denoise(
        self,
        req: GenerationRequest,
        style: ScaleConfig,
        started: float,
        lora_use: LoraUse | None,
        on_step: StepCallback | None,
    ) -> GenerationResult:
        has_identity = req.identity_count > 0

        # 3. Encode reference images (the negative half is present only when guidance doubles the batch)
        guided = req.guidance_scale > 1 and self.pipe.unet.config.time_cond_proj_dim is None
        identity_embeds: torch.Tensor | None = None
        if req.identity_embeds:
            identity_embeds = torch.cat([embed.to(self.device) for embed in req.identity_embeds])
        elif req.identity_images:
            identity_embeds = self.embed_identity(req.identity_images)
        style_embeds = req.style_embeds
        if req.style_image is not None:
            style_embeds = self.embed_style(req.style_image)
        if self.options.torch_compile:
            fixed = self.fixed_inputs(req, identity_embeds, style_embeds)
            image_embeds, guidance, scales = fixed.image_embeds, fixed.guidance_scale, fixed.scales
            attention: dict[str, Any] | None = {"ip_adapter_masks": fixed.masks}
        else:
            image_embeds, attention = self._inputs(req, identity_embeds, style_embeds, guided)
            guidance = req.guidance_scale
            scales = [req.identity_scale if has_identity else 0.0, style]

        # 4. Set adapter scales (an adapter at 0 is skipped inside attention); unchanged scales are not set again:
        #    it walks every attention processor (1.5 ms, 6 ms with a per-block dict, on the tiny model).
        if scales != self._scales:
            self._scales = None
            self.pipe.set_ip_adapter_scale(scales)
            self._scales = scales

        # 5. One generator per image, on the device, so image i is the first image of seed + i; compiled, one image
        #    per call (the batch keeps its shape)
        generators = [torch.Generator(device=self.device).manual_seed(req.seed + i) for i in range(req.num_images)]
        calls = [[generator] for generator in generators] if self.options.torch_compile else [generators]
        prepared = time.perf_counter()

        # 6. Denoise, reporting each step
        done = 0  # steps of the calls before this one

        def step_end(pipe: Any, step_index: int, timestep: Any, callback_kwargs: dict[str, Any]) -> dict[str, Any]:
            if on_step is not None and not on_step(done + step_index + 1, pipe.num_timesteps * len(calls)):
                # Raised out of the loop: no further step and no VAE decode (diffusers' own ``_interrupt`` skips
                # the remaining steps but still decodes).
                raise Interrupted(f"stopped at step {step_index + 1} of {req.steps}")
            return callback_kwargs

        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        images: list[PIL.Image.Image] = []
        with self._compile_watch(req.width, req.height) as compiled:
            for batch in calls:
                result = self.pipe(
                    prompt=req.prompt,
                    negative_prompt=req.negative_prompt,
                    width=req.width,
                    height=req.height,
                    num_inference_steps=req.steps,
                    guidance_scale=guidance,
                    num_images_per_prompt=len(batch),
                    generator=batch,
                    ip_adapter_image_embeds=image_embeds,
                    cross_attention_kwargs=attention,
                    callback_on_step_end=step_end,
                    output_type="pil",
                )
                images.extend(result.images)
                done += self.pipe.num_timesteps

        # 7. Return RGB images (the pipeline's PIL output already has the requested size)
        return GenerationResult(
            images=[image.convert("RGB") for image in images],
            prepare_s=prepared - started,
            inference_s=time.perf_counter() - prepared,
            lora=lora_use,
            peak_memory_bytes=int(torch.cuda.max_memory_allocated()) if cuda else None,
            compiles=compiled[0],
            recompiles=compiled[1],
        )

    def _inputs(self, req: GenerationRequest, identity_embeds: torch.Tensor | None,
                style_embeds: torch.Tensor | None, guided: bool) -> tuple[list[torch.Tensor], dict[str, Any] | None]:
        """An uncompiled engine's adapter inputs: masks only for people in regions; without them the call is
        exactly the one made before masks existed (the style adapter's entry None: not masked)."""
        masks: torch.Tensor | None = None
        if identity_embeds is not None and req.identity_regions and req.identity_scale > 0:
            identity_input, masks = self.identity_inputs(
                identity_embeds, req.identity_regions, req.width, req.height, guided
            )
        else:
            identity_input = self._adapter_input(IDENTITY, identity_embeds, guided)
        image_embeds = [identity_input, self._adapter_input(STYLE, style_embeds, guided)]
        return image_embeds, ({"ip_adapter_masks": [masks, None]} if masks is not None else None)

    @contextlib.contextmanager
    def _compile_watch(self, width: int, height: int) -> Iterator[list[int]]:
        """Around a job's pipeline calls: a size outside the compiled buckets runs the UNet uncompiled; yields
        ``[compiles, recompiles]``, filled in at the end (graphs dynamo made; those beyond a bucket's first)."""
        counts = [0, 0]
        if not self.options.torch_compile:
            yield counts
            return
        size = (width, height)
        bucket = size in self.options.compile_sizes
        before = _graphs_compiled()
        with contextlib.nullcontext() if bucket else torch.compiler.set_stance("force_eager"):
            try:
                yield counts
            finally:
                counts[0] = _graphs_compiled() - before
                counts[1] = max(0, counts[0] - (0 if size in self._compiled_sizes else 1))
                if counts[0]:
                    self._compiled_sizes.add(size)


def _graphs_compiled() -> int:
    """Graphs dynamo has compiled in this process, whatever the backend."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
