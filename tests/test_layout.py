"""Layout bounds: the build never makes an absurd composite, and --layout stays sane."""

from __future__ import annotations

import re

import pytest

from iclora_data.layout import (
    MAX_ASPECT,
    MAX_GRID_SIDE,
    MIN_PANEL_SIDE,
    LayoutError,
    choose_layout,
    parse_grid,
)
from iclora_data.presets import PRESETS


def test_a_61_panel_set_is_rejected_not_made_a_strip():
    with pytest.raises(LayoutError, match=r"61 panels in a 1x61 grid .* at most 8 rows and 8 columns"):
        choose_layout(61, [(512, 512)] * 61)


def test_a_prime_count_that_only_makes_a_sliver_is_rejected():
    with pytest.raises(LayoutError, match=f"times as long as it is wide \\(at most {MAX_ASPECT:g}\\)"):
        choose_layout(7, [(512, 512)] * 7)


def test_tiny_panels_are_rejected_with_their_size():
    # 36 panels at about one megapixel: 6x6 panels of ~170 px
    with pytest.raises(LayoutError, match=f"with (\\d+)x(\\d+) panels, under {MIN_PANEL_SIDE} pixels a side") as err:
        choose_layout(36, [(512, 512)] * 36)
    w, h = (int(v) for v in re.search(r"with (\d+)x(\d+) panels", str(err.value)).groups())
    assert min(w, h) < MIN_PANEL_SIDE and 6 * w * 6 * h <= 1.2 * 1024 * 1024  # the sizes it names are the real ones


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 8, 9, 12, 16])
def test_ordinary_sets_still_fit(n):
    layout = choose_layout(n, [(640, 480)] * n)
    assert layout.panels == n
    assert min(layout.panel_size) >= MIN_PANEL_SIDE
    assert max(layout.width, layout.height) / min(layout.width, layout.height) <= MAX_ASPECT


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_within_bounds(name):
    p = PRESETS[name]
    assert choose_layout(p.panels, [(512, 512)] * p.panels, preset=name).preset == name


@pytest.mark.parametrize("text", ["4000x4000", "9x1", "1x9", "9" * 5000 + "x1"])
def test_layout_option_has_bounds(text):
    with pytest.raises(LayoutError):
        parse_grid(text)
    assert parse_grid(f"{MAX_GRID_SIDE}x{MAX_GRID_SIDE}") == (MAX_GRID_SIDE, MAX_GRID_SIDE)


def test_unknown_preset_from_any_source_is_a_layout_error_naming_the_known_ones():
    with pytest.raises(LayoutError, match="unknown preset 'nope'; known presets: couple-profile"):
        choose_layout(2, [(512, 512)] * 2, preset="nope")
