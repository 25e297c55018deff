"""Fixtures for the caption tests: small composites on disk, as the compose stage writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from iclora_data.layout import Layout, preset_layout
from iclora_data.presets import get_preset
from iclora_data.records import CompositeRecord, file_stem
from iclora_data.store import content_key


def small_layout(n: int, preset: str | None = None, panel: int = 64) -> Layout:
    """A layout of ``n`` panels of ``panel`` px with a preset's tags (presets' real sizes are too big here)."""
    if preset:
        p = preset_layout(get_preset(preset))
        return Layout(p.rows, p.cols, p.cols * panel, p.rows * panel, panel_tags=p.panel_tags, prefix=p.prefix,
                      preset=preset)
    return Layout(1, n, n * panel, panel)


def make_composite(folder: Path, set_id: str, n: int = 2, preset: str | None = None, seed: int = 0,
                   source_caption: str | None = None, panel_hints: list[str] | None = None) -> CompositeRecord:
    layout = small_layout(n, preset)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (layout.height, layout.width, 3), dtype=np.uint8)
    stem = file_stem(set_id)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(folder / f"{stem}.jpg", quality=90)
    rec = CompositeRecord(
        set_id=set_id, key=content_key("test-composite", set_id, n, preset, seed), image=f"{stem}.jpg",
        rows=layout.rows, cols=layout.cols, width=layout.width, height=layout.height,
        panel_boxes=[list(b) for b in layout.panel_boxes()], panel_tags=list(layout.panel_tags),
        prefix=layout.prefix, preset=preset, task=None, source_files=[f"{set_id}/{i}.jpg" for i in range(n)],
        panel_hints=panel_hints, source_caption=source_caption)
    rec.save(folder / f"{stem}.json")
    return rec
