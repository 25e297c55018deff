"""Ready composites as input: one image that already holds a set's panels in a grid, with its
caption (the layout of IC-LoRA's released data: ``1.jpg`` + ``1.txt``).

Ingest marks such a set with ``SourceSet.composite_grid`` ("ROWSxCOLS"). The grid is given by the
user (``source.composite_grid`` or ``--layout``), by a dataset's layout column, or, failing those,
read from the panel tags the caption carries (``[SCENE-1]``..``[SCENE-3]`` is a 3x1 grid,
the corner tags a 2x2 one). The image is split into equal panel boxes so dedup compares its
panels like any other set's."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from PIL import Image

from iclora_data.images import ImageRejected, decode_rgb, read_header
from iclora_data.layout import Layout, LayoutError, fit_panel, parse_grid
from iclora_data.presets import PRESETS, UnknownPresetError, get_preset
from iclora_data.records import CompositeRecord, PanelRecord, PreparedSet, SourceSet
from iclora_data.sources import read_source
from iclora_data.store import RunStore, content_key

if TYPE_CHECKING:
    from iclora_data.config import ComposeSettings

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


READY_VERSION = "ready-composite/v1"  # bump when the way a ready composite is re-made changes


def ready_layout(width: int, height: int, grid: str, preset: str | None, caption: str | None) -> Layout:
    """The layout a ready composite is re-made at: its own size, each panel rounded down to a
    multiple of 16 (FLUX's packing), with the tags of a preset of the same grid when one is named
    or its trigger word opens the caption."""
    rows, cols = parse_grid(grid)
    pw, ph = max(16, width // cols // 16 * 16), max(16, height // rows // 16 * 16)
    named = [get_preset(preset)] if preset else [p for p in PRESETS.values() if p.prefix and caption
                                                 and caption.lstrip().startswith(p.prefix)]
    fitting = [p for p in named if (p.rows, p.cols) == (rows, cols)]
    if fitting:
        p = fitting[0]
        return Layout(rows, cols, pw * cols, ph * rows, p.panel_tags, p.prefix, p.name)
    return Layout(rows, cols, pw * cols, ph * rows)


def compose_ready(src: SourceSet, settings: ComposeSettings, store: RunStore) -> PreparedSet:
    """Validate a ready composite, split it into panels for dedup, and re-make it at a FLUX-friendly
    size (or find it in the store). The caption it brought stays its ``source_caption``."""
    from iclora_data.compose import save_image
    from iclora_data.dedup import perceptual_hash

    prepared = PreparedSet(src.set_id, list(src.files))
    if src.rejection or not src.composite_grid:
        prepared.rejection = src.rejection or "a ready composite needs its grid"
        return prepared
    ledger = src.files[0]
    try:
        data = read_source(src.paths[0])
    except OSError as exc:
        prepared.rejection = prepared.file_reasons[ledger] = f"cannot read the file: {exc.strerror or exc}"
        return prepared
    sha = hashlib.sha256(data).hexdigest()
    try:
        header = read_header(data, min_side=1, max_pixels=settings.max_pixels)
        layout = ready_layout(header.width, header.height, src.composite_grid, src.preset or settings.preset,
                              src.caption)
        boxes = split_boxes(header.width, header.height, src.composite_grid)
        small = [b for b in boxes if min(b[2] - b[0], b[3] - b[1]) < settings.min_side]
        if small:
            w, h = small[0][2] - small[0][0], small[0][3] - small[0][1]
            raise ImageRejected(f"too small: a {header.width}x{header.height} composite of {src.composite_grid} "
                                f"panels has {w}x{h} panels, the shorter side must be at least {settings.min_side}")
        key = content_key(READY_VERSION, sha, layout.grid, layout.width, layout.height, layout.preset,
                          settings.image_format, settings.quality)
        stored = store.object_path("composites", key, f".{settings.image_format}")
        facts = store.get_json("ready", key)
        if facts is None or not stored.exists():
            image = decode_rgb(data, min_side=1, max_pixels=settings.max_pixels)
            panels = [image.crop(b) for b in boxes]
            canvas = Image.new("RGB", (layout.width, layout.height), settings.fill)
            for panel, box in zip(panels, layout.panel_boxes(), strict=True):
                canvas.paste(fit_panel(panel, layout.panel_size, "crop"), box[:2])
            save_image(canvas, stored, settings)
            facts = {"phashes": [perceptual_hash(p) for p in panels],
                     "sizes": [[b[2] - b[0], b[3] - b[1]] for b in boxes]}
            store.put_json("ready", key, facts)
            prepared.decoded = 1
    except (ImageRejected, LayoutError, UnknownPresetError) as exc:
        prepared.rejection = prepared.file_reasons[ledger] = str(exc)
        return prepared
    # each panel of the grid is a panel for dedup; all name the one file they came from
    prepared.panels = [PanelRecord(ledger, f"{sha}#{i}", int(ph), int(w), int(h))
                       for i, (ph, (w, h)) in enumerate(zip(facts["phashes"], facts["sizes"], strict=True))]
    prepared.composite = CompositeRecord.of_set(src, key, layout, settings.image_format)
    return prepared
