"""The ``tiny`` profile: a random-weight SDXL + two IP-Adapters with exactly the real profile's file layout.

Everything the service does with the real weights (``from_pretrained``, ``load_ip_adapter``, per-block InstantStyle
scales, several identity references) runs unchanged on this model, in about a second on a CPU, with no download.
The UNet keeps SDXL's block layout (three down blocks, the first without attention, 1 and 2 transformer layers in
the others) so the real InstantStyle dict ``{"down": {"block_2": ...}, "up": {"block_0": ...}}`` is valid on it;
the VAE keeps the scale factor 8; the tokenizers are SDXL's: CLIP's real byte-level BPE (49,408 tokens, built from
the merges vendored in ``data/``, as OpenAI's and open_clip's ``SimpleTokenizer`` builds it), written as
``vocab.json`` + ``merges.txt`` like the published folder, so a prompt counts as many tokens as with SDXL and prompt
building keeps what it would keep there (only the text encoders' weights are random); the identity adapter is a
"plus" (Resampler) adapter written in the original IP-Adapter key format, which diffusers converts on load, like the
published ``ip-adapter-plus-face_sdxl_vit-h.safetensors``; the draft LoRA
(``draft/sdxl_lightning_4step_lora.safetensors``) is a random LoRA in the kohya layout of the published SDXL-Lightning
LoRA (``lora_unet_<sgm module>.lora_down/lora_up/alpha`` over every linear and convolution of the UNet's blocks),
which ``load_lora_weights`` converts on load.

The model is built in a hidden folder next to the target and renamed into place, so a reader never sees half a
model. An existing complete model with the same revision is left as it is; any other folder at the target (an
older seed, a broken copy) is replaced by two renames, during which a reader sees no model, never a partial one.
``TINY_FORMAT`` names what the generator writes: a folder written by an older generator is ``outdated`` and
``illustrations up``/``demo`` write it again.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from worker.pipeline.profiles import REVISION_FILE, ModelProfile, missing_files, read_revision, resolve_profile

logger = logging.getLogger(__name__)

TEXT_HIDDEN = 32  # each text encoder; the UNet's cross_attention_dim is the two concatenated
PROJECTION_DIM = 32  # text_encoder_2 and image encoder projections
UNET_CHANNELS = (16, 32, 32)
TIME_EMBED_DIM = 8  # addition_time_embed_dim; SDXL adds 6 time ids
VISION_HIDDEN = 32
VISION_IMAGE_SIZE = 32
RESAMPLER_DIM = 32
RESAMPLER_QUERIES = 16  # the published plus-face adapter uses 16 tokens
RESAMPLER_DEPTH = 4  # diffusers builds the Resampler with its default depth 4 and loads strictly
RESAMPLER_DIM_HEAD = 64  # diffusers derives heads as to_q rows // 64
BASIC_TOKENS = 4  # the basic adapter projects one image embedding to 4 tokens
MAX_LENGTH = 77
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's BPE (MIT; data/LICENSE-open_clip.txt): the first 48,894 merges of this file make SDXL's 49,408 tokens.
CLIP_BPE = Path(__file__).parent / "data" / "bpe_simple_vocab_16e6.txt.gz"
CLIP_MERGES = 49152 - 256 - 2
CLIP_VOCAB_SIZE = 49408
# What the generator writes (in the TINY_FORMAT file): 2 = CLIP's real vocabulary (1 had a toy one, unmarked);
# 3 = and the draft LoRA.
TINY_FORMAT = "3"
FORMAT_FILE = "TINY_FORMAT"
# SDXL base's scheduler settings, so step counts and timesteps behave as with the real model.
SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
}


def make_tiny(target: Path, seed: int = 0) -> Path:
    """Write the tiny model into ``target`` (deterministic for ``seed``) and return ``target``."""
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet = _write_base(staging / "base", staging / "tokenizers")
            _write_ip_adapter(resolve_profile("tiny", staging), unet)
            write_draft_lora(resolve_profile("tiny", staging).draft_file, unet, seed)
        revision = "tiny-" + _weights_digest(staging)[:12]
        (staging / REVISION_FILE).write_text(revision + "\n", encoding="utf-8")
        (staging / FORMAT_FILE).write_text(TINY_FORMAT + "\n", encoding="utf-8")
        _make_readable(staging)
        _install(staging, target, revision)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("tiny model %s at %s", revision, target)
    return target


# --- The base pipeline ------------------------------------------------------------------------------------------


def _write_base(base: Path, scratch: Path) -> Any:
    tokenizer_dirs = {name: scratch / name for name in ("tokenizer", "tokenizer_2")}
    vocab_size = _write_tokenizer(tokenizer_dirs["tokenizer"], pad_with=EOS)
    _write_tokenizer(tokenizer_dirs["tokenizer_2"], pad_with="!")  # SDXL's second tokenizer pads with "!"
    vocab = json.loads((tokenizer_dirs["tokenizer"] / "vocab.json").read_text(encoding="utf-8"))
    text_config = {
        "vocab_size": vocab_size,
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 2 * TEXT_HIDDEN,
        "num_hidden_layers": 2,  # SDXL reads the penultimate hidden state
        "num_attention_heads": 4,
        "max_position_embeddings": MAX_LENGTH,
        "projection_dim": PROJECTION_DIM,
        "bos_token_id": vocab[BOS],
        "eos_token_id": vocab[EOS],  # CLIP pools at the EOS token
        "pad_token_id": vocab[EOS],
        "hidden_act": "gelu",
    }
    unet = UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=UNET_CHANNELS,
        layers_per_block=2,
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),
        norm_num_groups=8,
        cross_attention_dim=2 * TEXT_HIDDEN,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + PROJECTION_DIM,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=1024,
        scaling_factor=0.13025,
        force_upcast=True,
    )
    pipe: Any = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_config)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text_config)),
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dirs["tokenizer"]),
        tokenizer_2=CLIPTokenizer.from_pretrained(tokenizer_dirs["tokenizer_2"]),
        unet=unet,
        scheduler=EulerDiscreteScheduler(**SCHEDULER),
    )
    pipe.save_pretrained(base)
    # transformers 5 saves tokenizer.json only; the published folder has vocab.json + merges.txt.
    for name, folder in tokenizer_dirs.items():
        shutil.rmtree(base / name)
        shutil.copytree(folder, base / name)
    shutil.rmtree(scratch)
    return unet


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values (byte-level BPE symbols)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.cache
def clip_bpe() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """CLIP's merges and vocabulary, built as OpenAI's ``SimpleTokenizer`` builds them: the 256 byte symbols, the
    same with ``</w>``, one token per merge in rank order, then ``<|startoftext|>`` and ``<|endoftext|>``."""
    lines = gzip.decompress(CLIP_BPE.read_bytes()).decode("utf-8").split("\n")
    merges = tuple(lines[1:CLIP_MERGES + 1])  # the first line is the file's header
    symbols = list(_bytes_to_unicode().values())
    tokens = (*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges), BOS, EOS)
    if len(tokens) != CLIP_VOCAB_SIZE or len(set(tokens)) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"{CLIP_BPE} does not give CLIP's {CLIP_VOCAB_SIZE} tokens")
    return merges, tokens


def outdated(root: Path) -> bool:
    """Whether the tiny model at ``root`` was written by another generator (an older ``TINY_FORMAT``)."""
    marker = root / FORMAT_FILE
    return not marker.is_file() or marker.read_text(encoding="utf-8").strip() != TINY_FORMAT


def _write_tokenizer(folder: Path, pad_with: str) -> int:
    """SDXL's CLIP byte-level BPE tokenizer (vocab.json + merges.txt); returns its vocabulary size."""
    merges, tokens = clip_bpe()
    vocab = {token: index for index, token in enumerate(tokens)}
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_with}
    config = {**special, "tokenizer_class": "CLIPTokenizer", "model_max_length": MAX_LENGTH, "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return len(vocab)


# --- The IP-Adapter folder --------------------------------------------------------------------------------------


def _write_ip_adapter(profile: ModelProfile, unet: Any) -> None:
    encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=VISION_HIDDEN,
            intermediate_size=2 * VISION_HIDDEN,
            projection_dim=PROJECTION_DIM,
            num_hidden_layers=2,  # the plus adapter reads the penultimate hidden state
            num_attention_heads=4,
            image_size=VISION_IMAGE_SIZE,
            patch_size=8,
        )
    )
    encoder.save_pretrained(profile.image_encoder_dir)
    cross_dim = int(unet.config.cross_attention_dim)
    profile.adapter_dir.mkdir(parents=True)
    identity = _resampler_tensors(cross_dim) | _attention_tensors(unet)
    style = _basic_projection_tensors(cross_dim) | _attention_tensors(unet)
    save_file(identity, profile.adapter_dir / profile.identity_weight, metadata={"format": "pt"})
    save_file(style, profile.adapter_dir / profile.style_weight, metadata={"format": "pt"})


def _linear(rows: int, cols: int) -> torch.Tensor:
    """A random weight with the scale of a default-initialised layer, so activations stay in range."""
    return torch.randn(rows, cols) / cols**0.5


def _norm(prefix: str, dim: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": 1.0 + 0.1 * torch.randn(dim), f"{prefix}.bias": 0.1 * torch.randn(dim)}


def _resampler_tensors(cross_dim: int) -> dict[str, torch.Tensor]:
    """The original IP-Adapter Resampler keys (``image_proj.layers.{i}.{0,1}...``) of a plus adapter."""
    dim, inner, ff = RESAMPLER_DIM, RESAMPLER_DIM_HEAD, 4 * RESAMPLER_DIM
    tensors = {
        "image_proj.latents": torch.randn(1, RESAMPLER_QUERIES, dim) / dim**0.5,
        "image_proj.proj_in.weight": _linear(dim, VISION_HIDDEN),
        "image_proj.proj_in.bias": 0.1 * torch.randn(dim),
        "image_proj.proj_out.weight": _linear(cross_dim, dim),
        "image_proj.proj_out.bias": 0.1 * torch.randn(cross_dim),
        **_norm("image_proj.norm_out", cross_dim),
    }
    for i in range(RESAMPLER_DEPTH):
        layer = f"image_proj.layers.{i}"
        tensors |= _norm(f"{layer}.0.norm1", dim) | _norm(f"{layer}.0.norm2", dim)
        tensors[f"{layer}.0.to_q.weight"] = _linear(inner, dim)
        tensors[f"{layer}.0.to_kv.weight"] = _linear(2 * inner, dim)
        tensors[f"{layer}.0.to_out.weight"] = _linear(dim, inner)
        tensors |= _norm(f"{layer}.1.0", dim)
        tensors[f"{layer}.1.1.weight"] = _linear(ff, dim)
        tensors[f"{layer}.1.3.weight"] = _linear(dim, ff)
    return tensors


def _basic_projection_tensors(cross_dim: int) -> dict[str, torch.Tensor]:
    return {
        "image_proj.proj.weight": _linear(BASIC_TOKENS * cross_dim, PROJECTION_DIM),
        "image_proj.proj.bias": 0.1 * torch.randn(BASIC_TOKENS * cross_dim),
        **_norm("image_proj.norm", cross_dim),
    }


def _attention_tensors(unet: Any) -> dict[str, torch.Tensor]:
    """``ip_adapter.{k}.to_{k,v}_ip.weight`` for each cross-attention, numbered as diffusers' loader counts them.

    The loader walks ``unet.attn_processors`` in order and gives the n-th cross-attention (attn2) the key 2n + 1;
    self-attention processors carry no weights. The hidden size is the channel count of the processor's block.
    """
    channels = list(unet.config.block_out_channels)
    cross_dim = int(unet.config.cross_attention_dim)
    tensors: dict[str, torch.Tensor] = {}
    key_id = 1
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = channels[-1]
        elif name.startswith("up_blocks"):
            hidden = channels[::-1][int(name.split(".")[1])]
        else:
            hidden = channels[int(name.split(".")[1])]
        tensors[f"ip_adapter.{key_id}.to_k_ip.weight"] = _linear(hidden, cross_dim)
        tensors[f"ip_adapter.{key_id}.to_v_ip.weight"] = _linear(hidden, cross_dim)
        key_id += 2
    return tensors


# --- Revision and installation ----------------------------------------------------------------------------------


def _weights_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.safetensors")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _make_readable(root: Path) -> None:
    """safetensors writes 0600 and mkdtemp makes 0700: workers under another user must read the model."""
    root.chmod(0o755)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            (Path(folder) / name).chmod(0o755)
        for name in files:
            (Path(folder) / name).chmod(0o644)


def _is_installed(target: Path, revision: str) -> bool:
    profile = resolve_profile("tiny", target)
    return (target.is_dir() and not missing_files(profile) and read_revision(profile) == revision
            and not outdated(target))


def _install(staging: Path, target: Path, revision: str) -> None:
    """Rename ``staging`` to ``target``; leave an identical complete model, replace anything else."""
    if _is_installed(target, revision):
        logger.info("tiny model %s already at %s; left as it is", revision, target)
        return
    aside: Path | None = None
    if target.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, aside)  # onto an empty folder: allowed, and atomic
    try:
        os.rename(staging, target)
    except OSError:
        # Another process installed a model between our check and our rename.
        if not _is_installed(target, revision):
            raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


# --- A LoRA for the tiny model ----------------------------------------------------------------------------------

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def randomise_lora(model: Any, rank: int, seed: int, strength: float = 0.5) -> None:
    """Give ``model``'s PEFT LoRA layers random weights (deterministic for ``seed``): ``lora_A`` scaled to keep
    activations' size, ``lora_B`` random at ``strength`` (PEFT initialises it to zero, which changes nothing)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_A" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / parameter.shape[1] ** 0.5)
            elif "lora_B" in name:
                parameter.copy_(strength * torch.randn(parameter.shape, generator=generator) / rank**0.5)


def make_tiny_lora(model_dir: Path, target: Path, *, rank: int = 4, alpha: int | None = None, seed: int = 0,
                   strength: float = 0.5) -> Path:
    """Write a random LoRA for the tiny model's UNet to the file ``target`` (deterministic for ``seed``).

    It is saved as training saves one: ``save_lora_weights`` with the adapter metadata of
    ``diffusers.training_utils._collate_lora_metadata``, so alpha is read back as written (without it diffusers
    would take alpha = rank). ``lora_B`` is random too (PEFT initialises it to zero, which changes nothing).
    """
    from diffusers.training_utils import _collate_lora_metadata
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    target = Path(target).resolve()
    unet: Any = UNet2DConditionModel.from_pretrained(resolve_profile("tiny", model_dir).base_dir / "unet")
    config = LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else rank, target_modules=list(LORA_TARGETS))
    unet.add_adapter(config)
    randomise_lora(unet, rank, seed, strength)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    metadata = _collate_lora_metadata({"unet": unet})
    for config in metadata.values():
        config["target_modules"] = sorted(config["target_modules"])  # a set: its order changes between processes
    try:
        StableDiffusionXLPipeline.save_lora_weights(
            staging,
            unet_lora_layers=get_peft_model_state_dict(unet),
            weight_name="lora.safetensors",
            **metadata,
        )
        (staging / "lora.safetensors").chmod(0o644)
        os.replace(staging / "lora.safetensors", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --- The draft LoRA (kohya layout, as SDXL-Lightning's) -----------------------------------------------------------

DRAFT_RANK = 8
DRAFT_ALPHA = 4  # not the rank: the file's alphas are read (the published one has rank 64, alpha 8)
DRAFT_STRENGTH = 0.3


def sgm_module_name(name: str, layers_per_block: int, up_with_attention: frozenset[int]) -> str | None:
    """The original (SGM) UNet's name of diffusers module ``name`` in a down, mid or up block (None elsewhere):
    what kohya LoRAs for SDXL, SDXL-Lightning's among them, name their layers after. ``up_with_attention``: the up
    blocks that have attentions (their upsampler comes third in the SGM block, else second)."""
    parts = name.split(".")
    per_block = layers_per_block + 1
    renames = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
               "conv_shortcut": "skip_connection"}
    if parts[0] == "mid_block":
        index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[1:3])]
        head, rest = f"middle_block.{index}", parts[3:]
    elif parts[0] in ("down_blocks", "up_blocks"):
        block, kind = int(parts[1]), parts[2]
        down = parts[0] == "down_blocks"
        if kind in ("downsamplers", "upsamplers"):
            if down:
                head, rest = f"input_blocks.{(block + 1) * per_block}.0.op", []
            else:
                position = 2 if block in up_with_attention else 1
                head, rest = f"output_blocks.{block * per_block + layers_per_block}.{position}.conv", []
        else:
            layer = int(parts[3])
            index = 1 + block * per_block + layer if down else block * per_block + layer
            head, rest = f"{'input' if down else 'output'}_blocks.{index}.{0 if kind == 'resnets' else 1}", parts[4:]
    else:
        return None
    if rest and ".".join(parts[2:3]) == "resnets":
        rest = renames.get(rest[0], rest[0]).split(".") + rest[1:]
    return ".".join([head, *rest])


def write_draft_lora(target: Path, unet: Any, seed: int, rank: int = DRAFT_RANK, alpha: int = DRAFT_ALPHA) -> None:
    """A random LoRA over every linear and convolution of the UNet's blocks, saved with kohya keys and alphas (the
    tiny model's draft LoRA; ``bench/gpu.py`` writes a full-size one, rank 64 and alpha 8 as published)."""
    generator = torch.Generator().manual_seed(seed + 1)
    up_with_attention = frozenset(i for i, block in enumerate(unet.up_blocks) if hasattr(block, "attentions"))
    tensors: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            continue
        sgm = sgm_module_name(name, int(unet.config.layers_per_block), up_with_attention)
        if sgm is None:
            continue
        key = "lora_unet_" + sgm.replace(".", "_")
        if isinstance(module, torch.nn.Linear):
            down_shape: tuple[int, ...] = (rank, module.in_features)
            up_shape: tuple[int, ...] = (module.out_features, rank)
        else:
            down_shape = (rank, module.in_channels, *module.kernel_size)
            up_shape = (module.out_channels, rank, 1, 1)
        fan_in = int(torch.tensor(down_shape[1:]).prod())
        tensors[f"{key}.lora_down.weight"] = torch.randn(down_shape, generator=generator) / fan_in**0.5
        tensors[f"{key}.lora_up.weight"] = DRAFT_STRENGTH * torch.randn(up_shape, generator=generator) / rank**0.5
        tensors[f"{key}.alpha"] = torch.tensor(float(alpha))
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, target)
