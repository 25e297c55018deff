"""Ready composites as input: one image that already holds a set's panels in a grid, with its
caption (the layout of IC-LoRA's released data: ``1.jpg`` + ``1.txt``).

Ingest marks such a set with ``SourceSet.composite_grid`` ("ROWSxCOLS"). The grid is given by the
user (``source.composite_grid`` or ``--layout``), by a dataset's layout column, or, failing those,
read from the panel tags the caption carries (``[SCENE-1]``..``[SCENE-3]`` is a 3x1 grid,
the corner tags a 2x2 one). The image is split into equal panel boxes so dedup compares its
panels like any other set's."""

from __future__ import annotations

from PIL import Image

from iclora_data.layout import LayoutError, parse_grid
from iclora_data.presets import PRESETS

Box = tuple[int, int, int, int]


def grid_from_caption(caption: str | None) -> str | None:
    """The grid whose panel tags all occur in ``caption``, when exactly one preset grid fits.

    Numbered tags (``[IMAGE1]``..``[IMAGEn]``) tell only the panel count; they give a grid only
    where a preset with that many numbered tags fixes it (a strip of 3 may run across or down)."""
    if not caption:
        return None
    numbered = 0
    while f"[IMAGE{numbered + 1}]" in caption:
        numbered += 1
    fits: dict[str, int] = {}
    for preset in PRESETS.values():
        if preset.panels > 1 and all(tag in caption for tag in preset.panel_tags) \
                and (numbered == 0 or preset.panels == numbered):
            fits[preset.grid] = max(fits.get(preset.grid, 0), preset.panels)
    if not fits:
        return None
    most = max(fits.values())
    best = [g for g, n in fits.items() if n == most]
    return best[0] if len(best) == 1 else None


def resolve_grid(*candidates: str | None, caption: str | None = None) -> str | None:
    """The first grid given (normalised "RxC"), else the caption's; None when none is known.
    Raises LayoutError for a given grid that is not ROWSxCOLS."""
    for grid in candidates:
        if grid:
            rows, cols = parse_grid(grid)
            return f"{rows}x{cols}"
    return grid_from_caption(caption)


def split_boxes(width: int, height: int, grid: str) -> list[Box]:
    """Equal panel boxes ``(x0, y0, x1, y1)``, row-major, covering the whole image.
    A side that does not divide evenly gives its remainder pixels to the last panels."""
    rows, cols = parse_grid(grid)
    if width < cols or height < rows:
        raise LayoutError(f"a {width}x{height} image cannot hold a {grid} grid")
    xs = [c * width // cols for c in range(cols + 1)]
    ys = [r * height // rows for r in range(rows + 1)]
    return [(xs[c], ys[r], xs[c + 1], ys[r + 1]) for r in range(rows) for c in range(cols)]


def split_composite(image: Image.Image, grid: str) -> list[Image.Image]:
    """The panels of a ready composite, in reading order."""
    return [image.crop(box) for box in split_boxes(image.width, image.height, grid)]
