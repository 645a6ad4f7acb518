"""People in regions on the tiny model: per-person identity tokens tied to their regions by attention masks.

The attention-level tests hook every identity adapter attention processor (``Probe``) and measure, for each person,
what their tokens add to the processor's output: the output of the real processor minus its output with that
person's tokens set to zero (the adapter's key/value projections have no bias, so zero tokens add exactly nothing).
128x128 pictures: the tiny UNet attends on 8x8 and 4x4 grids, so four columns are one coarsest cell each.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.image_processor import IPAdapterMaskProcessor
from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0

from shared.regions import WHOLE, Region, columns
from tests.faces import noise
from worker.pipeline import Engine, GenerationRequest, make_tiny_lora, resolve_profile
from worker.pipeline.engine import IDENTITY, STYLE
from worker.pipeline.lora import LoraRequest
from worker.pipeline.masks import MaskGrid, identity_masks

pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]

SIZE = 128
BASE: dict[str, Any] = {"prompt": "two people on a porch", "negative_prompt": None, "width": SIZE, "height": SIZE,
                        "steps": 2, "guidance_scale": 5.0, "seed": 11, "num_images": 1}
PHOTOS = [noise(seed) for seed in (1, 2, 3, 4)]
IDENTITY_SCALE = GenerationRequest(**BASE).identity_scale


def request(**changes: Any) -> GenerationRequest:
    return GenerationRequest(**{**BASE, **changes})


def pixels(engine: Engine, **changes: Any) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in engine.generate(request(**changes))]


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[Engine]:
    threads = torch.get_num_threads()
    yield Engine.load(resolve_profile("tiny", tiny_model_dir), device="cpu", num_threads=1)
    torch.set_num_threads(threads)


# --- the probe ----------------------------------------------------------------------------------------------------
@dataclass
class Measured:
    """What one person's tokens added at one call of one identity attention layer, on its grid."""

    grid: tuple[int, int]  # (rows, columns) of the layer's positions
    contribution: torch.Tensor  # (batch, rows, columns): the largest |added value| over channels at each position


class Probe(IPAdapterAttnProcessor2_0):
    """An identity attention processor being measured (``probing`` switches a loaded processor's class to this one,
    so its weights, scales and every ``isinstance`` check stay as they are). It runs the real call, then once more per
    person with that person's identity tokens zeroed: the difference is what the person added. It also records the
    identity tokens' and masks' shapes as they arrive."""

    people: int
    size: tuple[int, int]  # the picture's (width, height)
    measured: list[list[Measured]]
    shapes: list[tuple[tuple[int, ...], tuple[int, ...] | None]]

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Any = None,
                 attention_mask: Any = None, temb: Any = None, scale: float = 1.0,
                 ip_adapter_masks: Any = None) -> torch.Tensor:
        real = super().__call__
        out = real(attn, hidden_states, encoder_hidden_states, attention_mask, temb, scale, ip_adapter_masks)
        text, tokens = encoder_hidden_states
        identity = tokens[IDENTITY]
        masks = ip_adapter_masks[IDENTITY] if ip_adapter_masks is not None else None
        self.shapes.append((tuple(identity.shape), tuple(masks.shape) if masks is not None else None))
        width, height = self.size
        positions = hidden_states.shape[1]
        rows = round((positions * height / width) ** 0.5)
        grid = (rows, positions // rows)
        per_person = []
        for person in range(self.people):
            silenced = identity.clone()
            silenced[:, person] = 0
            without = real(attn, hidden_states, (text, [silenced, *tokens[1:]]), attention_mask, temb, scale,
                           ip_adapter_masks)
            per_person.append(Measured(grid, (out - without).abs().amax(dim=-1).reshape(out.shape[0], *grid)))
        self.measured.append(per_person)
        return out


def probing(engine: Engine, people: int, width: int = SIZE, height: int = SIZE) -> tuple[list[Probe], Any]:
    """Measure every identity attention processor; returns them and a function that ends the measuring."""
    probes: list[Probe] = []
    for processor in engine.pipe.unet.attn_processors.values():
        if isinstance(processor, IPAdapterAttnProcessor2_0):
            processor.__class__ = Probe
            probe: Probe = processor  # type: ignore[assignment]
            probe.people, probe.size, probe.measured, probe.shapes = people, (width, height), [], []
            probes.append(probe)

    def restore() -> None:
        for probe in probes:
            probe.__class__ = IPAdapterAttnProcessor2_0  # type: ignore[assignment]

    return probes, restore


def expected_inside(engine: Engine, region: Region, grid: tuple[int, int], width: int, height: int) -> torch.Tensor:
    """Which positions of a layer's grid lie in the region as the masks snap it (``MaskGrid``)."""
    mask_grid = engine.mask_grid
    x0, y0, x1, y1 = (v * mask_grid.mask_pixel for v in mask_grid.snap(region, width, height))
    rows, cols = grid
    centre_y = (torch.arange(rows) + 0.5) * height / rows
    centre_x = (torch.arange(cols) + 0.5) * width / cols
    return ((centre_y >= y0) & (centre_y < y1))[:, None] & ((centre_x >= x0) & (centre_x < x1))[None, :]


# --- at the attention level ----------------------------------------------------------------------------------------
# A draft (``quality: draft``): its few-step LoRA and scheduler, 4 steps, no classifier-free guidance.
DRAFT: dict[str, Any] = {"quality": "draft", "steps": 4, "guidance_scale": 0.0}


@pytest.mark.parametrize("regions", [
    pytest.param(tuple(columns(2)), id="two-columns"),
    pytest.param(((0.0, 0.0, 0.5, 1.0), (0.5, 0.0, 1.0, 0.5), (0.25, 0.5, 1.0, 1.0)), id="three-overlapping"),
])
@pytest.mark.parametrize("quality", ["final", "draft"])
def test_each_person_adds_nothing_outside_their_region_and_something_inside(
    engine: Engine, regions: tuple[Region, ...], quality: str
) -> None:
    people = len(regions)
    changes = DRAFT if quality == "draft" else {}
    probes, restore = probing(engine, people)
    try:
        engine.generate(request(identity_images=tuple(PHOTOS[:people]), identity_regions=regions, num_images=2,
                                **changes))
    finally:
        restore()
    calls = [per_person for probe in probes for per_person in probe.measured]
    # Every identity layer, every step, both halves of classifier-free guidance, two images: batch 4. A draft has
    # no guidance: batch 2 (the images alone), and its own steps.
    steps, batch = (DRAFT["steps"], 2) if quality == "draft" else (BASE["steps"], 4)
    assert len(calls) == len(probes) * steps and calls
    assert {measured.grid for per_person in calls for measured in per_person} == {(8, 8), (4, 4)}
    outside_max, inside_min = 0.0, float("inf")
    for per_person in calls:
        for person, measured in enumerate(per_person):
            inside = expected_inside(engine, regions[person], measured.grid, SIZE, SIZE)
            assert measured.contribution.shape[0] == batch
            outside_max = max(outside_max, float(measured.contribution[:, ~inside].max()))
            inside_min = min(inside_min, float(measured.contribution[:, inside].mean()))
    assert outside_max == 0.0  # exactly: not one position outside a person's region gets anything of them
    assert inside_min > 1e-4  # and every layer gives each person something inside their region


def test_without_masks_every_person_reaches_every_position(engine: Engine) -> None:
    """Today's blend, measured the same way: each person's tokens reach the whole picture."""
    probes, restore = probing(engine, 2)
    try:
        engine.generate(request(identity_images=tuple(PHOTOS[:2])))
    finally:
        restore()
    for probe in probes:
        for per_person in probe.measured:
            for measured in per_person:
                assert float(measured.contribution.min()) > 0.0


# --- images -----------------------------------------------------------------------------------------------------------
def test_swapping_two_peoples_photos_between_regions_changes_the_image(engine: Engine) -> None:
    left_right = tuple(columns(2))
    first = pixels(engine, identity_images=(PHOTOS[0], PHOTOS[1]), identity_regions=left_right)[0]
    swapped = pixels(engine, identity_images=(PHOTOS[1], PHOTOS[0]), identity_regions=left_right)[0]
    assert float(np.abs(first - swapped).mean()) > 2
    # Without regions the two photos' tokens are concatenated: their order changes the image by at most 1/255.
    blended = pixels(engine, identity_images=(PHOTOS[0], PHOTOS[1]))[0]
    reversed_blend = pixels(engine, identity_images=(PHOTOS[1], PHOTOS[0]))[0]
    assert int(np.abs(blended - reversed_blend).max()) <= 1


def test_the_same_request_twice_gives_the_same_image(engine: Engine) -> None:
    changes = {"identity_images": tuple(PHOTOS[:3]), "identity_regions": tuple(columns(3)), "num_images": 2}
    first, second = pixels(engine, **changes), pixels(engine, **changes)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_one_person_without_a_region_is_the_call_made_before_masks(engine: Engine) -> None:
    """Bit for bit: the engine's image equals the pipeline called exactly as before masks existed (the identity
    embeds ``(2, 1, tokens, dim)`` as [negative, positive], a neutral style entry, no ``cross_attention_kwargs``)."""
    embed = engine.embed(IDENTITY, PHOTOS[0])
    ours = engine.generate(request(identity_embeds=(embed,), num_images=2))
    negative = engine._negatives[IDENTITY]
    identity = torch.cat([negative.unsqueeze(0), embed.unsqueeze(0)])
    style = torch.zeros_like(torch.cat([engine._negatives[STYLE].unsqueeze(0)] * 2))
    engine.pipe.set_ip_adapter_scale([IDENTITY_SCALE, 0.0])
    before = engine.pipe(prompt=BASE["prompt"], width=SIZE, height=SIZE, num_inference_steps=BASE["steps"],
                         guidance_scale=BASE["guidance_scale"], num_images_per_prompt=2,
                         generator=[torch.Generator().manual_seed(BASE["seed"] + i) for i in range(2)],
                         ip_adapter_image_embeds=[identity, style]).images
    engine._scales = None  # the scales were set behind the engine's back
    for mine, theirs in zip(ours, before, strict=True):
        assert np.array_equal(np.asarray(mine), np.asarray(theirs))


def test_a_whole_picture_mask_gives_the_unmasked_image(engine: Engine) -> None:
    """What a fixed number of identity slots (a compiled UNet) relies on: one person under a whole-picture mask, and
    padding slots under zero masks, give the image of one person without masks."""
    plain = pixels(engine, identity_images=(PHOTOS[0],))[0]
    whole = pixels(engine, identity_images=(PHOTOS[0],), identity_regions=(WHOLE,))[0]
    assert np.array_equal(plain, whole)


def test_padding_slots_under_zero_masks_add_nothing(engine: Engine) -> None:
    embeds = torch.cat([engine.embed(IDENTITY, photo) for photo in PHOTOS[:2]])
    regions = columns(2)
    exact, exact_masks = engine.identity_inputs(embeds, regions, SIZE, SIZE, guided=True)
    padded, padded_masks = engine.identity_inputs(embeds, regions, SIZE, SIZE, guided=True, slots=4)
    assert tuple(exact.shape) == (2, 2, 17, 32) and tuple(padded.shape) == (2, 4, 17, 32)
    assert exact_masks is not None and padded_masks is not None
    assert tuple(padded_masks.shape) == (1, 4, SIZE // 4, SIZE // 4)
    assert float(padded_masks[0, 2:].abs().sum()) == 0.0
    assert torch.equal(padded_masks[:, :2], exact_masks)

    def run(identity: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
        style = torch.zeros(2, 1, 32)
        engine.pipe.set_ip_adapter_scale([0.6, 0.0])
        image = engine.pipe(prompt=BASE["prompt"], width=SIZE, height=SIZE, num_inference_steps=2, guidance_scale=5.0,
                            generator=[torch.Generator().manual_seed(3)], ip_adapter_image_embeds=[identity, style],
                            cross_attention_kwargs={"ip_adapter_masks": [masks, None]}).images[0]
        engine._scales = None
        return np.asarray(image)

    assert np.array_equal(run(exact, exact_masks), run(padded, padded_masks))
    with pytest.raises(ValueError, match="3 people do not fit in 2 identity slots"):
        engine.identity_inputs(torch.cat([embeds, embeds[:1]]), columns(3), SIZE, SIZE, guided=True, slots=2)


def test_four_people_with_guidance_four_images_a_style_and_a_lora(engine: Engine, tiny_model_dir: Path,
                                                                  tmp_path: Path) -> None:
    data = make_tiny_lora(tiny_model_dir, tmp_path / "ink.safetensors", seed=3).read_bytes()
    lora = LoraRequest(key="ink", scale=0.8, fetch=lambda: data)
    probes, restore = probing(engine, 4)
    try:
        images = engine.generate(request(identity_images=tuple(PHOTOS), identity_regions=tuple(columns(4)),
                                         style_image=noise(9), content_scale=0.5, num_images=4, lora=lora))
    finally:
        restore()
    assert [image.size for image in images] == [(SIZE, SIZE)] * 4
    # Under guidance the batch is 2 x 4 images; each person keeps their own 16 tokens (the plus-face resampler's
    # count) of the UNet's cross-attention width in their own slot, with one mask per person.
    width = engine.pipe.unet.config.cross_attention_dim
    identity_shapes = {shape for probe in probes for shape in probe.shapes}
    assert identity_shapes == {((8, 4, 16, width), (1, 4, SIZE // 4, SIZE // 4))}
    for probe in probes:
        for per_person in probe.measured:
            for person, measured in enumerate(per_person):
                inside = expected_inside(engine, columns(4)[person], measured.grid, SIZE, SIZE)
                assert float(measured.contribution[:, ~inside].max()) == 0.0


# --- the masks ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("width", "height"), [(128, 128), (1024, 1024), (1024, 768), (64, 96)])
def test_masks_downsample_to_exact_zeros_and_ones_on_every_attention_grid(engine: Engine, width: int,
                                                                          height: int) -> None:
    grid = MaskGrid.of(engine.pipe.unet, engine.pipe.vae_scale_factor)
    assert (grid.cell, grid.mask_pixel) == (32, 4)  # as on SDXL: attention at 1/16 and 1/32 of the picture
    regions = [(0.0, 0.0, 0.5, 1.0), (0.3, 0.2, 1.0, 0.9)]
    masks = identity_masks(grid, regions, width, height)
    assert tuple(masks.shape) == (1, 2, height // 4, width // 4)
    for factor in (16, 32):
        rows, cols = -(-height // factor), -(-width // factor)
        for person in range(2):
            small = IPAdapterMaskProcessor.downsample(masks[:, person], 1, rows * cols, 1)
            assert set(small.unique().tolist()) == {0.0, 1.0}


def test_regions_snap_to_the_coarsest_cells(engine: Engine) -> None:
    grid = engine.mask_grid
    assert grid.snap((0.0, 0.0, 0.5, 1.0), 1024, 1024) == (0, 0, 128, 256)  # mask pixels (1/4 of the picture)
    assert grid.snap((0.33, 0.0, 0.66, 1.0), 384, 64) == (32, 0, 64, 16)  # 12 cells of 32 px: 4..8
    assert grid.snap((0.5, 0.5, 0.51, 0.51), 128, 128) == (16, 16, 24, 24)  # thinner than a cell: one cell


@pytest.mark.parametrize(("changes", "message"), [
    ({"identity_images": (PHOTOS[0],), "identity_regions": tuple(columns(2))},
     "`identity_regions` must give one region per identity image: 1 images, 2 regions"),
    ({"identity_images": (PHOTOS[0],), "identity_regions": ((0.5, 0.0, 0.2, 1.0),)},
     "`identity_regions[0]` must have x0 < x1 and y0 < y1"),
    ({"identity_images": (PHOTOS[0],), "identity_regions": ((0.0, 0.0, 1.5, 1.0),)},
     "`identity_regions[0]` must be four fractions between 0 and 1"),
])
def test_bad_regions_are_refused_by_the_engine(engine: Engine, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        engine.generate(request(**changes))
