"""The pipeline on CPU: the tiny random-weight model, loaded through the real from_pretrained/load_ip_adapter code.

64x64 images, 2 steps, 1 torch thread: the whole module runs in a few seconds.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection
from safetensors.torch import load_file

from worker.pipeline import (
    Engine,
    GenerationRequest,
    Interrupted,
    ModelsMissing,
    make_tiny,
    missing_files,
    read_revision,
    resolve_profile,
    validate_scale_dict,
)
from worker.pipeline.engine import IDENTITY, STYLE, EngineOptions, style_scale_dict
from worker.pipeline.lora import HotswapSlot

pytestmark = [
    # diffusers' EulerDiscreteScheduler.set_timesteps calls np.array() on a torch tensor; numpy 2.4 warns that
    # torch's __array__ lacks the `copy` keyword. Harmless, inside the library, on every call.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]

BASE: dict[str, Any] = {
    "prompt": "a lighthouse at dusk",
    "negative_prompt": None,
    "width": 64,
    "height": 64,
    "steps": 2,
    "guidance_scale": 5.0,
    "seed": 7,
    "num_images": 1,
}


def request(**changes: Any) -> GenerationRequest:
    return GenerationRequest(**{**BASE, **changes})


def photo(seed: int, size: tuple[int, int] = (40, 48)) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def pixels(engine: Engine, **changes: Any) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in engine.generate(request(**changes))]


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[Engine]:
    threads = torch.get_num_threads()
    yield Engine.load(resolve_profile("tiny", model_dir), device="cpu", num_threads=1)
    torch.set_num_threads(threads)


# --- The tiny model and profiles --------------------------------------------------------------------------------


def test_make_tiny_writes_the_real_layout(model_dir: Path) -> None:
    profile = resolve_profile("tiny", model_dir)
    assert missing_files(profile) == []
    for rel in (
        "base/model_index.json",
        "base/unet/diffusion_pytorch_model.safetensors",
        "base/tokenizer/vocab.json",
        "base/tokenizer_2/merges.txt",
        "ip-adapter/models/image_encoder/model.safetensors",
        "ip-adapter/sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors",
        "ip-adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
    ):
        assert (model_dir / rel).is_file(), rel
    assert not (model_dir / "base/tokenizer/tokenizer.json").exists()  # like the published folder
    revision = (model_dir / "MODEL_REVISION").read_text().strip()
    assert re.fullmatch(r"tiny-[0-9a-f]{12}", revision)
    assert read_revision(profile) == revision
    modes = {path.stat().st_mode & 0o777 for path in model_dir.rglob("*")}
    assert modes == {0o644, 0o755}  # readable by a worker running as another user
    assert [p.name for p in model_dir.parent.iterdir()] == ["tiny"]  # no staging folder left behind


def test_make_tiny_is_deterministic_and_installs_whole(model_dir: Path, tmp_path: Path) -> None:
    revision = read_revision(resolve_profile("tiny", model_dir))
    same = make_tiny(tmp_path / "same", seed=0)
    assert read_revision(resolve_profile("tiny", same)) == revision
    unet = "base/unet/diffusion_pytorch_model.safetensors"
    assert (same / unet).read_bytes() == (model_dir / unet).read_bytes()

    inode = (same / unet).stat().st_ino
    make_tiny(same, seed=0)  # complete and identical: left as it is
    assert (same / unet).stat().st_ino == inode

    make_tiny(same, seed=1)  # another model: replaced whole
    replaced = read_revision(resolve_profile("tiny", same))
    assert replaced != revision
    assert missing_files(resolve_profile("tiny", same)) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same"]


def test_a_tiny_model_of_an_older_generator_is_outdated_and_replaced(tmp_path: Path) -> None:
    """A cached `var/models/tiny` written before CLIP's vocabulary (no TINY_FORMAT file) is written again by
    `illustrations up`/`demo` (they check ``outdated``) and by `models make-tiny` (same revision, other format)."""
    from worker.pipeline.tiny import FORMAT_FILE, outdated

    model = make_tiny(tmp_path / "tiny", seed=0)
    assert not outdated(model)
    (model / FORMAT_FILE).unlink()  # as the first generator left it
    assert outdated(model)
    inode = (model / "base/unet/diffusion_pytorch_model.safetensors").stat().st_ino
    make_tiny(model, seed=0)
    assert not outdated(model)
    assert (model / "base/unet/diffusion_pytorch_model.safetensors").stat().st_ino != inode  # installed again


def test_plus_adapter_loads_as_a_resampler_with_the_file_weights(engine: Engine, model_dir: Path) -> None:
    layers: list[Any] = list(engine.pipe.unet.encoder_hid_proj.image_projection_layers)
    identity, style = layers
    assert isinstance(identity, IPAdapterPlusImageProjection)
    assert isinstance(style, ImageProjection)
    saved = load_file(model_dir / "ip-adapter/sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors")
    # The original key format went through diffusers' converter into the loaded module, not a fresh random init.
    assert torch.equal(identity.latents.detach(), saved["image_proj.latents"])
    to_k, to_v = saved["image_proj.layers.3.0.to_kv.weight"].chunk(2)
    block: Any = identity.layers[3]
    assert torch.equal(block.attn.to_k.weight.detach(), to_k)
    assert torch.equal(block.attn.to_v.weight.detach(), to_v)
    assert torch.equal(block.ff[1].net[2].weight.detach(), saved["image_proj.layers.3.1.3.weight"])
    processor = engine.pipe.unet.attn_processors["up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor"]
    assert processor.num_tokens == [16, 4]  # plus: 16 tokens per image; basic: 4


def test_missing_file_is_named_and_load_refuses(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tiny"
    shutil.copytree(model_dir, copy)
    (copy / "base/unet/diffusion_pytorch_model.safetensors").unlink()
    (copy / "ip-adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors").unlink()
    profile = resolve_profile("tiny", copy)
    assert missing_files(profile) == [
        "base/unet/diffusion_pytorch_model.safetensors",
        "ip-adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors",
    ]
    with pytest.raises(ModelsMissing) as caught:
        Engine.load(profile, device="cpu")
    message = str(caught.value)
    assert str(copy) in message
    assert "base/unet/diffusion_pytorch_model.safetensors" in message
    assert f"illustrations models make-tiny {copy}" in message

    sdxl = ModelsMissing(resolve_profile("sdxl", tmp_path / "nowhere"), ["base/model_index.json"])
    assert "illustrations models download" in str(sdxl)
    assert f"mount the weights at {tmp_path / 'nowhere'}" in str(sdxl)
    with pytest.raises(ValueError, match="`name` must be one of tiny, sdxl"):
        resolve_profile("sd15", tmp_path)


def test_revision_without_marker_is_a_stable_fingerprint(model_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "tiny"
    shutil.copytree(model_dir, copy)
    (copy / "MODEL_REVISION").unlink()
    first = read_revision(resolve_profile("tiny", copy))
    assert re.fullmatch(r"tiny-[0-9a-f]{12}", first)
    assert first == read_revision(resolve_profile("tiny", copy))
    with (copy / "ip-adapter/sdxl_models/ip-adapter_sdxl_vit-h.safetensors").open("ab") as handle:
        handle.write(b"\0")
    assert read_revision(resolve_profile("tiny", copy)) != first


# --- Generation -------------------------------------------------------------------------------------------------


def test_same_request_gives_identical_pixels(engine: Engine) -> None:
    first, second = pixels(engine)[0], pixels(engine)[0]
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, second)
    assert first.std() > 5  # a real image, not a constant
    assert mean_diff(first, pixels(engine, seed=8)[0]) > 1


def test_image_i_uses_seed_plus_i(engine: Engine) -> None:
    batch = pixels(engine, seed=20, num_images=3)
    assert len(batch) == 3
    for i, image in enumerate(batch):
        alone = pixels(engine, seed=20 + i)[0]
        # Batched and single runs share the latents exactly; the UNet's batched arithmetic may round differently.
        assert np.abs(image - alone).max() <= 1
    assert mean_diff(batch[0], batch[1]) > 1


def test_text_only_request_runs_with_both_adapters_loaded(engine: Engine) -> None:
    text_only = pixels(engine)[0]
    # An adapter at scale 0 is skipped, so references at scale 0 give exactly the text-only image.
    assert np.array_equal(text_only, pixels(engine, identity_images=(photo(1),), identity_scale=0.0)[0])
    assert np.array_equal(text_only, pixels(engine, style_image=photo(2), style_scale=0.0, content_scale=0.0)[0])
    assert pixels(engine, guidance_scale=1.0)[0].shape == (64, 64, 3)  # no guidance: no negative half


def test_identity_images_and_scale_change_the_output(engine: Engine) -> None:
    text_only = pixels(engine)[0]
    one = pixels(engine, identity_images=(photo(1),), identity_scale=0.6)[0]
    stronger = pixels(engine, identity_images=(photo(1),), identity_scale=1.2)[0]
    other_person = pixels(engine, identity_images=(photo(3),), identity_scale=0.6)[0]
    assert mean_diff(one, text_only) > 1
    assert mean_diff(one, stronger) > 1
    assert mean_diff(one, other_person) > 0.5


def test_four_identity_images_work_and_five_are_refused(engine: Engine) -> None:
    four = tuple(photo(seed) for seed in range(4))
    many = pixels(engine, identity_images=four)[0]
    assert many.shape == (64, 64, 3)
    assert mean_diff(many, pixels(engine, identity_images=four[:1])[0]) > 0.5
    assert engine.embed_identity(four).shape == (4, 17, 32)  # 16 patches + CLS, vision hidden size
    with pytest.raises(ValueError, match="`identity_images` must hold at most 4, got 5"):
        engine.generate(request(identity_images=(*four, photo(9))))


def test_style_image_and_scales_change_the_output(engine: Engine) -> None:
    text_only = pixels(engine)[0]
    styled = pixels(engine, style_image=photo(5))[0]
    assert mean_diff(styled, text_only) > 1
    assert mean_diff(styled, pixels(engine, style_image=photo(5), style_scale=0.0)[0]) > 0.5
    # content_scale defaults to 0 (InstantStyle's "style only"); above 0 the reference's layout block adds its part.
    assert np.array_equal(styled, pixels(engine, style_image=photo(5), content_scale=0.0)[0])
    assert mean_diff(styled, pixels(engine, style_image=photo(5), content_scale=1.0)[0]) > 0.5
    assert mean_diff(styled, pixels(engine, style_image=photo(6))[0]) > 0.5
    assert engine.embed_style(photo(5)).shape == (1, 32)


@pytest.mark.parametrize("guidance_scale", [5.0, 1.0])
def test_embeddings_match_diffusers_image_path(engine: Engine, guidance_scale: float) -> None:
    """Our [negative, positive] embeddings must equal what diffusers builds from the images themselves."""
    faces, style = (photo(1), photo(2)), photo(5)
    ours = pixels(engine, identity_images=faces, style_image=style, guidance_scale=guidance_scale, num_images=2)
    # generate() left the scales of this request set; run diffusers' own path with the images.
    theirs = engine.pipe(
        prompt=BASE["prompt"],
        width=64,
        height=64,
        num_inference_steps=2,
        guidance_scale=guidance_scale,
        num_images_per_prompt=2,
        generator=[torch.Generator().manual_seed(BASE["seed"] + i) for i in range(2)],
        ip_adapter_image=[list(faces), style],
    ).images
    for mine, image in zip(ours, theirs, strict=True):
        assert np.abs(mine - np.asarray(image, dtype=np.int16)).max() <= 1


def test_bad_scale_dicts_are_refused(engine: Engine) -> None:
    unet = engine.pipe.unet
    validate_scale_dict(unet, style_scale_dict(0.8, 1.0))
    validate_scale_dict(unet, 0.5)
    cases: dict[str, Any] = {
        "`down.block_0`, which has no attention": {"down": {"block_0": [1.0, 1.0]}},
        "`up.block_3`, which has no attention": {"up": {"block_3": [0.0, 1.0, 0.0]}},
        "`up.block_0` must list 3 values, got 2": {"up": {"block_0": [0.0, 1.0]}},
        "`down.block_2` must list 2 values, got 3": {"down": {"block_2": [0.0, 1.0, 0.0]}},
        "expected `down`, `mid` or `up`": {"middle": 1.0},
    }
    for message, scale in cases.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            validate_scale_dict(unet, scale)


def test_progress_and_interrupt(engine: Engine) -> None:
    calls: list[tuple[int, int]] = []

    def record(step: int, total: int) -> bool:
        calls.append((step, total))
        return True

    engine.generate(request(), on_step=record)
    assert calls == [(1, 2), (2, 2)]

    calls.clear()

    def stop_after_first(step: int, total: int) -> bool:
        calls.append((step, total))
        return step < 1

    with pytest.raises(Interrupted, match="step 1 of 4"):
        engine.generate(request(steps=4), on_step=stop_after_first)
    assert calls == [(1, 4)]  # no step ran after the stop
    assert pixels(engine)[0].shape == (64, 64, 3)  # the next job runs normally


def test_output_has_the_requested_non_square_size(engine: Engine) -> None:
    images = engine.generate(request(width=64, height=96, num_images=2))
    assert [(image.size, image.mode) for image in images] == [((64, 96), "RGB")] * 2
    assert np.asarray(images[0]).shape == (96, 64, 3)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"width": 1004}, "`width` must be a multiple of 8, got 1004"),
        ({"height": 32}, "`height` must be between 64 and 2048, got 32"),
        ({"steps": 0}, "`steps` must be between 1 and 150, got 0"),
        ({"num_images": 9}, "`num_images` must be between 1 and 8, got 9"),
        ({"seed": -1}, "`seed` must be between 0 and"),
        ({"guidance_scale": float("nan")}, "`guidance_scale` must be between 0 and 30.0, got nan"),
        ({"identity_scale": 3.0}, "`identity_scale` must be between 0 and 2.0, got 3.0"),
        ({"prompt": "  "}, "`prompt` must be a non-empty string"),
        ({"identity_images": (photo(1).convert("L"),)}, "`identity_images[0]` must be an RGB PIL image, got L"),
        ({"style_image": photo(1).convert("RGBA")}, "`style_image` must be an RGB PIL image, got RGBA"),
    ],
)
def test_invalid_requests_name_the_parameter(engine: Engine, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        engine.generate(request(**changes))


def test_embeddings_given_back_reproduce_the_image_exactly(engine: Engine) -> None:
    """What the embedding cache relies on: an embedding computed once, stored and handed back, gives exactly the
    image of the job that encoded its reference itself."""
    from safetensors.torch import load, save

    faces, style = (photo(1), photo(2)), photo(5)
    uncached = pixels(engine, identity_images=faces, style_image=style)[0]
    stored = [load(save({"e": engine.embed(IDENTITY, face)}))["e"] for face in faces]
    style_stored = load(save({"e": engine.embed(STYLE, style)}))["e"]
    cached = pixels(engine, identity_embeds=tuple(stored), style_embeds=style_stored)[0]
    assert np.array_equal(cached, uncached)
    with pytest.raises(ValueError, match="give `identity_images` or `identity_embeds`, not both"):
        engine.generate(request(identity_images=faces, identity_embeds=tuple(stored)))


# torch's own inductor imports torch.utils.mkldnn, which uses the deprecated torch.jit.script_method.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_speed_and_memory_switches_are_applied(model_dir: Path) -> None:
    threads = torch.get_num_threads()
    options = EngineOptions(torch_compile=True, vae_tiling=True, vae_slicing=True, lora_slots=1)
    switched = Engine.load(resolve_profile("tiny", model_dir), device="cpu", num_threads=1, options=options)
    torch.set_num_threads(threads)
    assert switched.pipe.vae.use_tiling
    assert switched.pipe.vae.use_slicing
    # Compiled in place (compilation itself happens at the first call, which this test does not make: ~2 min on CPU).
    assert switched.pipe.unet._compiled_call_impl is not None
    assert type(switched.pipe.unet).__name__ == "UNet2DConditionModel"
    assert switched.pipe.do_classifier_free_guidance  # the fixed batch layout: guidance's two halves, always
    assert isinstance(switched.loras, HotswapSlot)  # compiled: one hot-swap slot, not ``lora_slots``
    assert switched.loras.resident() == {}
    assert switched.device_name == "cpu"
    assert switched.encoder_revision.endswith("-float32")
