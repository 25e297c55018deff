"""Header-first validation and the one decode: limits, speed, and draft-decoding quality."""

from __future__ import annotations

import io
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from iclora_data.images import ImageRejected, decode_rgb, draft_request, read_header
from iclora_data.layout import fit_panel
from tests._images import png_declaring


def test_400_megapixel_png_is_rejected_from_its_header_without_allocating():
    data = png_declaring(20000, 20000)
    tracemalloc.start()
    t = time.perf_counter()
    with pytest.raises(ImageRejected, match="too large: 400 megapixels, over the limit of 100 megapixels"):
        decode_rgb(data)
    elapsed = time.perf_counter() - t
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 5 * 2**20  # decoding would need 1.2 GB


def test_min_side_is_checked_on_the_displayed_size():
    buf = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buf, "PNG")
    with pytest.raises(ImageRejected, match="too small: 300x200 pixels"):
        read_header(buf.getvalue())
    assert read_header(buf.getvalue(), min_side=200).width == 300


def photo(size: tuple[int, int]) -> bytes:
    """A real photograph (scikit-image's astronaut, public domain) as a large JPEG."""
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.astronaut()).resize(size, Image.Resampling.LANCZOS).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def psnr(a: Image.Image, b: Image.Image) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(10 * np.log10(255**2 / np.mean((x - y) ** 2)))


def test_draft_decoding_gives_the_panel_without_visible_loss():
    data = photo((2048, 2048))
    target = (256, 256)
    full = fit_panel(decode_rgb(data), target)
    drafted_source = decode_rgb(data, target=target)
    assert drafted_source.width < 2048  # the DCT scaling really happened
    assert drafted_source.width >= 256  # never below what the panel needs
    drafted = fit_panel(drafted_source, target)
    assert psnr(full, drafted) > 38.0


def test_draft_is_not_used_when_the_panel_needs_the_pixels():
    assert draft_request((1024, 1024), False, (768, 768), "crop") is None
    assert draft_request((4000, 3000), False, (512, 512), "crop") == (683, 512)
    # EXIF-rotated: the request is made in stored orientation
    assert draft_request((3000, 4000), True, (512, 384), "crop") == (384, 512)
