"""Where each person goes in the picture: regions in fractions of the width and height, ``[x0, y0, x1, y1]``.

With two or more people each one's identity tokens are tied to a region by an attention mask (the GPU worker builds
the masks, ``worker.pipeline.masks``). The regions are the request's own (every subject has one, or none does) or,
when none is given, equal columns left to right in the order given. One person without a region has the whole
picture and no mask, exactly as before regions existed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from shared import limits

Region = tuple[float, float, float, float]
WHOLE: Final[Region] = (0.0, 0.0, 1.0, 1.0)


def check_region(values: Sequence[float]) -> Region:
    """A valid region, or ValueError saying what is wrong (never echoing the values)."""
    if len(values) != 4:
        raise ValueError("must be [x0, y0, x1, y1]: four numbers")
    x0, y0, x1, y1 = (float(v) for v in values)
    if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
        raise ValueError("each value must be between 0 and 1 (fractions of the width and height)")
    if x0 >= x1 or y0 >= y1:
        raise ValueError("must have x0 < x1 and y0 < y1")
    if (x1 - x0) * (y1 - y0) < limits.REGION_MIN_AREA:
        raise ValueError(f"must cover at least 1/{round(1 / limits.REGION_MIN_AREA)} of the picture")
    return (x0, y0, x1, y1)


def as_region(values: Sequence[float]) -> Region:
    """A stored region (a JSON list) as a tuple; it was checked when it was accepted."""
    x0, y0, x1, y1 = values
    return (float(x0), float(y0), float(x1), float(y1))


def columns(count: int) -> list[Region]:
    """``count`` equal columns, left to right."""
    return [(i / count, 0.0, (i + 1) / count, 1.0) for i in range(count)]


def regions_used(given: Sequence[Region | None]) -> list[Region] | None:
    """The region of each person (in order), or None when nobody is masked: no one, or one person without a
    region. ``given``: each person's region as asked (all or none; a mix is refused at submit)."""
    if not given or (len(given) == 1 and given[0] is None):
        return None
    if all(region is not None for region in given):
        return [region for region in given if region is not None]
    if any(region is not None for region in given):
        raise ValueError("give every subject a region, or none")
    return columns(len(given))


def layout_regions(given: Sequence[Region | None]) -> list[Region]:
    """What the job echoes in ``layout``: the regions used, the whole picture for one person without one."""
    used = regions_used(given)
    return used if used is not None else [WHOLE] * len(given)


POSITIONS: Final[dict[int, tuple[str, ...]]] = {
    2: ("on the left", "on the right"),
    3: ("on the left", "in the middle", "on the right"),
    4: ("on the far left", "left of centre", "right of centre", "on the far right"),
}


def left_to_right(regions: Sequence[Region]) -> list[tuple[int, str]]:
    """Each person's index and a phrase for where they are ("on the left", ...), ordered left to right by their
    regions' centres (ties keep the order given); empty for fewer than two or more than four people."""
    words = POSITIONS.get(len(regions))
    if words is None:
        return []
    order = sorted(range(len(regions)), key=lambda i: (regions[i][0] + regions[i][2]) / 2)
    return [(index, words[rank]) for rank, index in enumerate(order)]
