"""Per-person attention masks for the identity adapter: each person's tokens reach only their region.

diffusers' IP-Adapter attention (``IPAdapterAttnProcessor2_0``) takes, per adapter, a mask tensor ``(1, n, H, W)``
(one binary mask per reference image of that adapter, built by ``IPAdapterMaskProcessor``) through
``cross_attention_kwargs={"ip_adapter_masks": [...]}``. With a mask, reference i's tokens are attended on their
own and their output is multiplied by mask i, bicubic-downsampled to each attention layer's grid; without one, every
reference's tokens are concatenated and every pixel attends to all of them (the faces blend).

**Exact zeros.** Bicubic interpolation of a binary mask rings at its edges (values a little below 0 or above 1 in
the cells next to an edge), which would leak a person into their neighbour's cells. It does not ring when every
edge falls on a cell boundary of the coarsest attention grid and the mask has at least 4 of its pixels per cell of
the finest grid: each output cell then samples 4 taps inside one constant run of the mask, whose weights sum to
exactly 1. So ``MaskGrid`` reads both grids off the UNet (SDXL: attention at 1/16 and 1/32 of the picture), region
edges are snapped to the coarsest cells (SDXL: 32 pixels, 1/32 of a 1024-pixel side), and masks are made at 1/4 of
the finest cell (SDXL: a 256x256 mask for a 1024x1024 picture, small enough to downsample on every call). For sizes
that are multiples of the coarsest cell, a person's contribution outside their region is exactly zero; other sizes
are rounded by the UNet itself and may blur an edge by one cell.

**Padding slots.** ``identity_masks(..., slots=k)`` appends all-zero masks up to ``k`` images: a padding reference
(any embedding, e.g. the negative one) under a zero mask adds exactly nothing, so a caller that needs a fixed number
of identity images (a compiled UNet) can pad with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import PIL.Image
import PIL.ImageDraw
import torch
from diffusers.image_processor import IPAdapterMaskProcessor

from shared.regions import Region

TAPS_PER_CELL = 4  # bicubic's taps: a mask this fine per finest attention cell downsamples without ringing


@dataclass(frozen=True)
class MaskGrid:
    """Where a UNet attends, in picture pixels: the coarsest attention cell (region edges snap to it) and how many
    picture pixels one mask pixel covers."""

    cell: int
    mask_pixel: int

    @classmethod
    def of(cls, unet: Any, vae_scale_factor: int) -> MaskGrid:
        levels = [i for i, block in enumerate(unet.down_blocks) if getattr(block, "attentions", None)]
        if not levels:
            raise ValueError("the UNet has no cross-attention blocks to mask")
        coarsest = vae_scale_factor * 2 ** (len(unet.down_blocks) - 1)  # the last down block and the mid block
        finest = vae_scale_factor * 2 ** min(levels)
        return cls(cell=coarsest, mask_pixel=max(1, finest // TAPS_PER_CELL))

    def snap(self, region: Region, width: int, height: int) -> tuple[int, int, int, int]:
        """The region in mask pixels, its edges on the coarsest attention cells (at least one cell each way)."""

        def edges(low: float, high: float, side: int) -> tuple[int, int]:
            cells = max(1, round(side / self.cell))
            start, end = round(low * cells), round(high * cells)
            if end <= start:  # thinner than a cell: the cell around its centre
                start = min(cells - 1, int((low + high) / 2 * cells))
                end = start + 1
            scale = side / cells / self.mask_pixel  # mask pixels per cell
            return round(start * scale), round(end * scale)

        x0, x1 = edges(region[0], region[2], width)
        y0, y1 = edges(region[1], region[3], height)
        return x0, y0, x1, y1

    def mask_size(self, width: int, height: int) -> tuple[int, int]:
        return max(1, width // self.mask_pixel), max(1, height // self.mask_pixel)


_PROCESSOR = IPAdapterMaskProcessor()


def identity_masks(grid: MaskGrid, regions: Sequence[Region], width: int, height: int, *, slots: int | None = None,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """One binary mask per person (in order), then all-zero masks up to ``slots``: shape ``(1, slots, h, w)``, the
    identity adapter's entry of ``ip_adapter_masks``."""
    slots = len(regions) if slots is None else slots
    if slots < len(regions):
        raise ValueError(f"{len(regions)} regions do not fit in {slots} slots")
    size = grid.mask_size(width, height)
    images = []
    for index in range(slots):
        image = PIL.Image.new("L", size, 0)
        if index < len(regions):
            x0, y0, x1, y1 = grid.snap(regions[index], width, height)
            PIL.ImageDraw.Draw(image).rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
        images.append(image)
    masks = _PROCESSOR.preprocess(images, height=size[1], width=size[0])  # (slots, 1, h, w), binarised
    return masks.reshape(1, slots, masks.shape[-2], masks.shape[-1]).to(device=device, dtype=torch.float32)
