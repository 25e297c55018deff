"""Composite geometry: the one place that knows how panels sit in a grid.

Compose uses it to paste panels, the sampler to cut generated composites back into panels,
the dataset writer to record panel boxes. Every panel side and the whole image are multiples
of 16 pixels, because FLUX packs 2x2 patches of an 8x-downsampling VAE's latents.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from iclora_data.presets import Preset, default_panel_tags, get_preset

MULTIPLE = 16
# Automatic layouts make the whole composite a multiple of this, so that LoRA trainers bucket it
# at its own size: kohya sd-scripts' default bucket step is 64 (FLUX needs a multiple of 32),
# ai-toolkit buckets FLUX images in steps of 32. Every preset's size is a multiple of 64 too.
TRAINER_MULTIPLE = 64
AUTO_PIXELS = 1024 * 1024  # target area of an automatic layout
# Bounds of a composite the build makes (choose_layout). A 61-panel set must not become a 7808x128
# strip: FLUX learns nothing from 128 px panels, and a grid of thousands of cells eats gigabytes.
MAX_GRID_SIDE = 8  # rows and columns each
MIN_PANEL_SIDE = 192  # 12x12 FLUX patches; a 4x4 grid of 4:3 panels at one megapixel (288x224) fits
MAX_ASPECT = 5.0  # long side / short side of the whole composite
MAX_COMPOSITE_PIXELS = 4096 * 4096
FitMode = Literal["crop", "pad"]
Box = tuple[int, int, int, int]


class LayoutError(ValueError):
    pass


@dataclass(frozen=True)
class Layout:
    rows: int
    cols: int
    width: int
    height: int
    panel_tags: tuple[str, ...] = ()
    prefix: str = ""
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.rows < 1 or self.cols < 1:
            raise LayoutError(f"a layout needs at least one row and one column, got {self.rows}x{self.cols}")
        if self.width % self.cols or self.height % self.rows:
            raise LayoutError(f"{self.width}x{self.height} does not split into {self.rows}x{self.cols} equal panels")
        pw, ph = self.panel_size
        if pw % MULTIPLE or ph % MULTIPLE:
            raise LayoutError(f"panel size {pw}x{ph} is not a multiple of {MULTIPLE} pixels")
        if not self.panel_tags:
            object.__setattr__(self, "panel_tags", default_panel_tags(self.panels))
        if len(self.panel_tags) != self.panels:
            raise LayoutError(f"{len(self.panel_tags)} panel tags for {self.panels} panels")

    @property
    def panels(self) -> int:
        return self.rows * self.cols

    @property
    def grid(self) -> str:
        return f"{self.rows}x{self.cols}"

    @property
    def panel_size(self) -> tuple[int, int]:
        return self.width // self.cols, self.height // self.rows

    def panel_boxes(self) -> list[Box]:
        """``(x0, y0, x1, y1)`` of each panel, row-major (reading order)."""
        pw, ph = self.panel_size
        return [(c * pw, r * ph, (c + 1) * pw, (r + 1) * ph) for r in range(self.rows) for c in range(self.cols)]

    def split(self, composite: Image.Image) -> list[Image.Image]:
        """Cut a composite of this layout's size back into its panels."""
        if composite.size != (self.width, self.height):
            raise LayoutError(f"composite is {composite.width}x{composite.height}, layout expects "
                              f"{self.width}x{self.height}")
        return [composite.crop(box) for box in self.panel_boxes()]


def parse_grid(text: str) -> tuple[int, int]:
    """``"3x1"`` -> ``(3, 1)``: rows x cols."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*[xX×]\s*(\d{1,6})\s*", text)
    if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
        raise LayoutError(f"layout must be ROWSxCOLS such as 3x1 or 2x2, got {text[:40]!r}")
    rows, cols = int(m.group(1)), int(m.group(2))
    if rows > MAX_GRID_SIDE or cols > MAX_GRID_SIDE:
        raise LayoutError(f"layout {rows}x{cols} is too large: at most {MAX_GRID_SIDE} rows and "
                          f"{MAX_GRID_SIDE} columns")
    return rows, cols


def round16(x: float) -> int:
    return max(MULTIPLE, int(round(x / MULTIPLE)) * MULTIPLE)


def panel_step(count: int, multiple: int = TRAINER_MULTIPLE) -> int:
    """Smallest step for a panel side (a multiple of 16) such that ``count`` panels in a row
    span a multiple of ``multiple``: 64 for 1 or 3 panels, 32 for 2, 16 for 4."""
    return math.lcm(MULTIPLE, multiple // math.gcd(multiple, count))


def round_to(x: float, step: int) -> int:
    return max(step, int(round(x / step)) * step)


def auto_grid(n: int, panel_aspect: float) -> tuple[int, int]:
    """Grid for ``n`` panels without a preset. ``panel_aspect`` is width / height.

    Wide panels stack (film strip), tall panels sit side by side; four make 2x2; other
    counts take the most square exact factorisation (a prime count becomes a strip).
    """
    if n < 1:
        raise LayoutError("a layout needs at least one panel")
    if n in (2, 3):
        return (n, 1) if panel_aspect > 1.0 else (1, n)
    rows = max(r for r in range(1, math.isqrt(n) + 1) if n % r == 0)
    cols = n // rows
    # put the longer side of the grid along the panels' shorter side
    return (cols, rows) if panel_aspect > 1.0 and cols > rows else (rows, cols)


def auto_layout(rows: int, cols: int, panel_aspect: float, pixels: int = AUTO_PIXELS) -> Layout:
    """A ``rows x cols`` layout of about ``pixels`` in all, panels near ``panel_aspect``; both
    sides of the composite are multiples of ``TRAINER_MULTIPLE`` (see ``panel_step``)."""
    aspect = min(max(panel_aspect, 0.25), 4.0)  # keep panoramas and slivers usable
    panel_area = pixels / (rows * cols)
    pw = round_to(math.sqrt(panel_area * aspect), panel_step(cols))
    ph = round_to(math.sqrt(panel_area / aspect), panel_step(rows))
    return Layout(rows, cols, pw * cols, ph * rows)


def preset_layout(preset: Preset) -> Layout:
    return Layout(preset.rows, preset.cols, preset.width, preset.height,
                  panel_tags=preset.panel_tags, prefix=preset.prefix, preset=preset.name)


def choose_layout(n_panels: int, panel_sizes: Sequence[tuple[int, int]], preset: str | None = None,
                  grid: str | None = None) -> Layout:
    """The layout a set of ``n_panels`` gets. Raises LayoutError when the count does not fit.

    A preset fixes size and grid; ``grid`` alone fixes the grid at about one megapixel; with
    neither, the grid follows the panel count and the panels' median aspect.
    """
    aspects = sorted(w / h for w, h in panel_sizes) or [1.0]
    aspect = aspects[len(aspects) // 2]
    if preset:
        try:
            layout = preset_layout(get_preset(preset))
        except ValueError as exc:  # an unknown preset from any source is the set's problem, not a crash
            raise LayoutError(str(exc)) from None
    elif grid:
        layout = auto_layout(*parse_grid(grid), panel_aspect=aspect)
    else:
        layout = auto_layout(*auto_grid(n_panels, aspect), panel_aspect=aspect)
    if layout.panels != n_panels:
        where = f"preset {preset}" if preset else f"layout {layout.grid}"
        raise LayoutError(f"expected {layout.panels} panels for {where}, found {n_panels}")
    check_bounds(layout)
    return layout


def check_bounds(layout: Layout) -> None:
    """Raise LayoutError when a composite would be absurd: too many cells, a sliver, tiny panels."""
    pw, ph = layout.panel_size
    what = f"{layout.panels} panels in a {layout.grid} grid make a {layout.width}x{layout.height} composite"
    advice = "split the set, or give a preset or --layout with a squarer grid"
    if layout.rows > MAX_GRID_SIDE or layout.cols > MAX_GRID_SIDE:
        raise LayoutError(f"{what}: at most {MAX_GRID_SIDE} rows and {MAX_GRID_SIDE} columns; {advice}")
    aspect = max(layout.width, layout.height) / min(layout.width, layout.height)
    if aspect > MAX_ASPECT:
        raise LayoutError(f"{what}, {aspect:.1f} times as long as it is wide (at most {MAX_ASPECT:g}); {advice}")
    if min(pw, ph) < MIN_PANEL_SIDE:
        raise LayoutError(f"{what} with {pw}x{ph} panels, under {MIN_PANEL_SIDE} pixels a side; {advice}")
    if layout.width * layout.height > MAX_COMPOSITE_PIXELS:
        raise LayoutError(f"{what}: over {MAX_COMPOSITE_PIXELS / 1e6:.1f} megapixels")


def fit_box(src: tuple[int, int], dst: tuple[int, int], mode: FitMode) -> tuple[Box, tuple[int, int], tuple[int, int]]:
    """How a ``src`` (w, h) image fills a ``dst`` panel.

    Returns ``(source box to read, size to resize it to, offset inside the panel)``.
    ``crop`` covers the panel and cuts the centre; ``pad`` fits inside and centres.
    """
    sw, sh = src
    dw, dh = dst
    if mode == "crop":
        scale = max(dw / sw, dh / sh)
        cw, ch = dw / scale, dh / scale  # the part of the source that is kept
        x0, y0 = (sw - cw) / 2, (sh - ch) / 2
        box = (int(round(x0)), int(round(y0)), int(round(x0 + cw)), int(round(y0 + ch)))
        return box, (dw, dh), (0, 0)
    if mode == "pad":
        scale = min(dw / sw, dh / sh)
        rw, rh = max(1, int(round(sw * scale))), max(1, int(round(sh * scale)))
        return (0, 0, sw, sh), (rw, rh), ((dw - rw) // 2, (dh - rh) // 2)
    raise LayoutError(f"fit mode must be 'crop' or 'pad', got {mode!r}")


def fit_panel(image: Image.Image, size: tuple[int, int], mode: FitMode = "crop",
              fill: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Resize ``image`` (RGB) into a panel of ``size`` by ``mode``, with Lanczos filtering."""
    box, resized, offset = fit_box(image.size, size, mode)
    # reducing_gap: box-reduce by an integer factor first, then Lanczos; visually identical, much faster
    panel = image.resize(resized, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    if panel.size == size:
        return panel
    canvas = Image.new("RGB", size, fill)
    canvas.paste(panel, offset)
    return canvas
